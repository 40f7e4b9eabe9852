"""The small demos behind ``diffinfer structured PART`` (issue 19's parts), one module per part.

Library code lives in the library's own modules; a demo module only loads data, runs the part
on it and prints / plots the figures. See ``diffinfer.cli.structured``."""
