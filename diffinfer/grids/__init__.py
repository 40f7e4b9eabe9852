"""Time grids: builders, the ``Grid`` coefficient record, fitted grids."""
from .grid import DeviceGrid, Grid, GridPoint

__all__ = ["Grid", "GridPoint", "DeviceGrid"]
