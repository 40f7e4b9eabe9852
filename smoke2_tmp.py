import torch, time, diffinfer as di
from diffinfer import grids, solvers
from diffinfer.structured_state import Layout, Dense, Symmetric, joint_denoiser
from diffinfer.toys.graph_gaussian import GraphGaussian
torch.set_num_threads(1)
n,f=5,2
gg=GraphGaussian.random(n,f,seed=0)
lay=Layout(nodes=Dense(n,f), adj=Symmetric(n))
proc=di.VP("linear")
den=joint_denoiser(gg.net(proc,"eps"), lay, proc, "eps")
x=torch.randn(8, lay.size, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
for name in ["adaptive","dpmpp-2m","heun"]:
    t0=time.time(); ts=grids.logsnr(proc,40,t_max=1.0,t_min=1e-2,final_zero=False)
    r=di.sample(den,x,solver=name,ts=ts); print(name, r.nfe, time.time()-t0)
import cProfile
cProfile.run('di.sample(den,x,solver="heun",ts=ts)', sort='cumtime')
