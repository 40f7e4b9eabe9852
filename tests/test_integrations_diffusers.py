"""diffusers bridge: from_diffusers, scheduler_grid, DiffinferScheduler (the scheduler contract
and DDPM / DDIM / Stable Diffusion pipelines end to end), on tiny random models built offline."""
import json

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

import diffinfer as di  # noqa: E402
from diffinfer.guidance import ClassifierFreeGuidance  # noqa: E402
from diffinfer.integrations.diffusers import (DiffinferScheduler, alphas_cumprod, flow_mu,  # noqa: E402
                                              from_diffusers, scheduler_grid)
from diffinfer.thresholding import ClipSample, DynamicThresholding  # noqa: E402
from diffusers import (DDIMPipeline, DDIMScheduler, DDPMPipeline, DDPMScheduler,  # noqa: E402
                       DPMSolverMultistepScheduler, EulerDiscreteScheduler, FlowMatchEulerDiscreteScheduler,
                       UNet2DModel)


def _unet(seed=0):
    torch.manual_seed(seed)
    return UNet2DModel(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(8, 16),
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=4).eval()


def _noise(shape, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


# --- from_diffusers: process, prediction, time input, grid --------------------------------
@pytest.mark.parametrize("schedule", ["linear", "scaled_linear", "squaredcos_cap_v2"])
def test_alphas_cumprod_float64_matches_the_scheduler(schedule):
    sched = DDPMScheduler(beta_schedule=schedule, beta_start=0.00085, beta_end=0.012)
    acp = alphas_cumprod(sched)
    assert acp.dtype == torch.float64
    torch.testing.assert_close(acp.float(), sched.alphas_cumprod, rtol=2e-6, atol=1e-7)


@pytest.mark.parametrize("kind,expected", [("epsilon", "eps"), ("v_prediction", "v"), ("sample", "x0")])
def test_prediction_type_time_input_and_cond_keys(kind, expected):
    unet = _unet()
    den = from_diffusers(unet, DDIMScheduler(prediction_type=kind, clip_sample=False))
    assert isinstance(den, di.Denoiser) and den.prediction == expected
    assert isinstance(den.process, di.DiscreteVP) and den.process.N == 1000
    assert float(den.time_input(torch.tensor(0.5, dtype=torch.float64))) == 499.0  # t N - 1
    assert den.cond_keys == ("class_labels",)
    x = _noise((2, 3, 8, 8))
    with torch.no_grad():  # the UNet's output object is unwrapped
        torch.testing.assert_close(den.raw(x, 0.5), unet(x, torch.tensor(499.0)).sample)
    with pytest.raises(ValueError, match="conditioning keys"):
        from_diffusers(unet, DDIMScheduler(), cond={"encoder_hidden_states": x})
    with pytest.raises(ValueError, match="scheduler it was trained with"):
        from_diffusers(unet)


def test_clip_sample_and_dynamic_thresholding_are_wrappers():
    unet = _unet()
    assert isinstance(from_diffusers(unet, DDPMScheduler()), ClipSample)  # DDPM clips by default
    den = from_diffusers(unet, DDPMScheduler(thresholding=True, dynamic_thresholding_ratio=0.9, sample_max_value=1.5))
    assert isinstance(den, DynamicThresholding)
    x0 = 3 * _noise((4, 3, 8, 8))
    ref = DDPMScheduler(thresholding=True, dynamic_thresholding_ratio=0.9, sample_max_value=1.5)._threshold_sample(x0)
    torch.testing.assert_close(den._map(x0), ref)
    x = _noise((2, 3, 8, 8), 1)
    p = den.predict(x, 0.3)  # eps re-derived from the clipped x0
    c = den.process.at(0.3)
    torch.testing.assert_close(p.eps, (x - float(c.alpha) * p.x0) / float(c.sigma))
    assert not from_diffusers(unet, DDPMScheduler(), thresholding=False).__class__.__name__.startswith("Clip")


def test_set_alpha_to_one_and_zero_terminal_snr():
    grid = scheduler_grid(DDIMScheduler(set_alpha_to_one=False, steps_offset=1), 4)
    assert float(grid[-1]) == pytest.approx(1e-3)  # the last step goes to alphas_cumprod[0]
    assert float(scheduler_grid(DDIMScheduler(set_alpha_to_one=True), 4)[-1]) == 0.0
    zs = DDIMScheduler(rescale_betas_zero_snr=True, timestep_spacing="trailing", prediction_type="v_prediction",
                       clip_sample=False)
    den = from_diffusers(_unet(), zs)
    p = den.process
    assert p.zero_terminal and float(p.alpha(1.0)) == 0.0 and float(p.sigma(1.0)) == 1.0
    ts = den.default_ts(4)
    assert float(ts[0]) == 1.0  # trailing spacing starts at pure noise, as a flow does
    # v prediction stays finite at alpha = 0, and the whole solve runs
    res = di.sample(den, x_T=_noise((2, 3, 8, 8)), solver="ddim", steps=4)
    assert torch.isfinite(res.x).all()


def test_grids_from_sigma_schedulers_do_not_overshoot():
    for sched in (EulerDiscreteScheduler(), EulerDiscreteScheduler(use_karras_sigmas=True),
                  EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                         timestep_spacing="trailing"),
                  DPMSolverMultistepScheduler()):
        ts = scheduler_grid(sched, 7)
        assert ts.dtype == torch.float64 and len(ts) == 8
        assert 0.0 <= float(ts[-1]) and float(ts[0]) <= 1.0 and bool((ts[1:] < ts[:-1]).all())
    # Euler's own timesteps are the training indices of its sigmas
    sched = EulerDiscreteScheduler()
    sched.set_timesteps(5)
    ts = scheduler_grid(sched, 5)
    torch.testing.assert_close(ts[:-1] * 1000 - 1, sched.timesteps.double(), atol=2e-2, rtol=0)


def test_flow_grids_shift_and_resolution_mu():
    sched = FlowMatchEulerDiscreteScheduler(shift=3.0)
    ts = scheduler_grid(sched, 6)
    sched.set_timesteps(6)
    torch.testing.assert_close(ts, sched.sigmas.double())
    dyn = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True)
    with pytest.raises(ValueError, match="mu="):
        scheduler_grid(dyn, 6)
    mu = flow_mu(dyn, 1024)
    assert mu == pytest.approx(0.5 + (1024 - 256) * (1.15 - 0.5) / (4096 - 256))
    hi, lo = scheduler_grid(dyn, 6, mu=mu), scheduler_grid(dyn, 6, mu=0.5)
    assert float(hi[0]) == 1.0 and bool((hi[1:-1] > lo[1:-1]).all())  # larger images: shifted to noise


def test_default_grid_is_the_schedulers_and_ddim_matches_diffusers():
    """``sample`` without ``ts`` runs on the scheduler's own timesteps: DDIM there equals
    diffusers' own ``DDIMScheduler`` loop."""
    unet = _unet()
    sched = DDIMScheduler(clip_sample=False, set_alpha_to_one=True, steps_offset=1)
    den = from_diffusers(unet, sched)
    x_T = _noise((2, 3, 8, 8))
    res = di.sample(den, x_T=x_T, solver="ddim", steps=5)
    sched.set_timesteps(5)
    assert res.ts[:-1].mul(1000).sub(1).round().long().tolist() == sched.timesteps.tolist()
    x = x_T
    with torch.no_grad():
        for t in sched.timesteps:
            x = sched.step(unet(x, t).sample, t, x).prev_sample
    torch.testing.assert_close(res.x, x, rtol=1e-4, atol=1e-4)


# --- DiffinferScheduler: the scheduler contract ---------------------------------------------
class _Dummy(torch.nn.Module):
    """A dummy eps model (diffusers' scheduler tests use one like it)."""

    def forward(self, x, t):
        return 0.1 * x * torch.cos(torch.as_tensor(t, dtype=x.dtype).reshape(-1, *[1] * (x.dim() - 1)) / 300)


def test_scheduler_contract_step_outputs_timesteps_and_props():
    s = DiffinferScheduler.from_scheduler(DDIMScheduler(clip_sample=False), solver="dpmpp-2m")
    s.set_timesteps(6)
    assert s.timesteps.dtype == torch.float32 and len(s.timesteps) == 6
    assert bool((s.timesteps[1:] < s.timesteps[:-1]).all()) and s.order == 1
    x = _noise((2, 3, 4, 4))
    assert s.scale_model_input(x, s.timesteps[0]) is x
    assert s.init_noise_sigma == pytest.approx(float(s.process.sigma(s.ts[0])))
    out = s.step(0.1 * x, s.timesteps[0], x)
    assert isinstance(out, diffusers.schedulers.scheduling_utils.SchedulerOutput) and out.prev_sample.shape == x.shape
    out2 = s.step(0.1 * x, s.timesteps[1], out.prev_sample, return_dict=False)
    assert isinstance(out2, tuple) and len(out2) == 1 and out2[0].shape == x.shape
    assert s.step_index == 2 and s.state.history  # the solver's explicit state record
    with pytest.raises(ValueError, match="one call|model calls per step"):
        DiffinferScheduler.from_scheduler(DDIMScheduler(), solver="heun")


def test_full_loop_with_a_dummy_model_equals_sample():
    for solver, opts in [("dpmpp-2m", {}), ("unipc", {"order": 3}), ("ddpm", {}), ("euler", {})]:
        sched = DiffinferScheduler.from_scheduler(DDPMScheduler(clip_sample=False), solver=solver, seed=3, **opts)
        sched.set_timesteps(7)
        model = _Dummy()
        x = x_T = _noise((3, 2, 4, 4))
        for t in sched.timesteps:
            x = sched.step(model(x, t), t, x).prev_sample
        den = di.Denoiser(model, sched.process, "eps", time_input=lambda t: t * 1000 - 1)
        ref = di.sample(den, x_T=x_T, solver=solver, ts=sched.ts, seed=3, **opts).x
        assert torch.equal(x, ref), solver


def test_add_noise_and_begin_index():
    base = DDPMScheduler(clip_sample=False)
    s = DiffinferScheduler.from_scheduler(base, solver="ddim")
    x0, eps = _noise((4, 3, 4, 4)), _noise((4, 3, 4, 4), 1)
    ts = torch.tensor([0, 10, 500, 999])
    torch.testing.assert_close(s.add_noise(x0, eps, ts), base.add_noise(x0, eps, ts), rtol=1e-5, atol=1e-6)
    # begin at grid index 2 (img2img): the loop from there equals iterate(start=2)
    s.set_timesteps(6)
    s.set_begin_index(2)
    model = _Dummy()
    x = x_mid = _noise((2, 3, 4, 4), 2)
    for t in s.timesteps[2:]:
        x = s.step(model(x, t), t, x).prev_sample
    den = di.Denoiser(model, s.process, "eps", time_input=lambda t: t * 1000 - 1)
    ref, _ = di.loop.rollout(den, di.solvers.get("ddim"), x_mid, s.ts, start=2)
    assert torch.equal(x, ref)


def test_config_round_trip(tmp_path):
    fitted = di.grids.OptimizedGrid(ts=[1.0, 0.7, 0.35, 0.1, 0.0], solver="unipc", steps=4)
    s = DiffinferScheduler.from_scheduler(DDIMScheduler(prediction_type="v_prediction"), solver="unipc",
                                          grid=fitted, seed=5, order=3)
    s.save_config(tmp_path)
    saved = json.loads((tmp_path / "scheduler_config.json").read_text())
    assert saved["_class_name"] == "DiffinferScheduler" and saved["grid"] == fitted.ts
    for t in (DiffinferScheduler.from_pretrained(tmp_path), DiffinferScheduler.from_config(s.config)):
        assert dict(t.config) == dict(s.config)
        assert t.prediction == "v" and t.solver.order == 3 and t.config.seed == 5
        t.set_timesteps(4)
        torch.testing.assert_close(t.ts, torch.tensor(fitted.ts, dtype=torch.float64))
    with pytest.raises(ValueError, match="fixed 4-step grid"):
        s.set_timesteps(10)
    named = DiffinferScheduler.from_scheduler(DDIMScheduler(), solver="dpmpp-3m", grid="karras")
    named.set_timesteps(5)
    torch.testing.assert_close(named.ts, di.grids.karras(named.process, 5))


# --- pipelines end to end -------------------------------------------------------------------
def test_ddpm_pipeline_with_our_scheduler_equals_sample_bitwise():
    unet = _unet()
    pipe = DDPMPipeline(unet=unet, scheduler=DDPMScheduler())
    den = from_diffusers(pipe)  # clip_sample=True: a ClipSample wrapper, also inside the scheduler
    pipe.scheduler = DiffinferScheduler.from_scheduler(pipe.scheduler, solver="ddpm", seed=0)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(batch_size=2, num_inference_steps=4, generator=torch.Generator().manual_seed(0), output_type="np").images
    res = di.sample(den, x_T=_noise((2, 3, 8, 8)), solver="ddpm", steps=4, seed=0)  # the scheduler's own grid
    ref = (res.x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    assert (ref == out).all()


def test_ddim_pipeline_with_a_fitted_grid_equals_sample_bitwise():
    unet = _unet()
    den = from_diffusers(unet, DDIMScheduler(clip_sample=False))
    fitted = di.grids.optimize(den, "unipc", steps=3, shape=(3, 8, 8), n_train=4, teacher_steps=12, max_evals=6,
                               dtype=torch.float32)
    pipe = DDIMPipeline(unet=unet, scheduler=DDIMScheduler(clip_sample=False))
    pipe.scheduler = DiffinferScheduler.from_scheduler(pipe.scheduler, solver="unipc", grid=fitted)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(batch_size=2, num_inference_steps=3, generator=torch.Generator().manual_seed(1), output_type="np").images
    res = di.sample(den, x_T=_noise((2, 3, 8, 8), 1), solver="unipc", ts=fitted.grid)
    ref = (res.x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    assert (ref == out).all()


def _tiny_sd(tmp_path):
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for suffix in ("", "</w>"):
        for c in "abcdefghijklmnopqrstuvwxyz":
            vocab[c + suffix] = len(vocab)
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = transformers.CLIPTokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"),
                                           model_max_length=8)
    torch.manual_seed(0)
    text = transformers.CLIPTextModel(transformers.CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=8, bos_token_id=0, eos_token_id=1, pad_token_id=1)).eval()
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(8, 16), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=16,
                                attention_head_dim=2, norm_num_groups=4).eval()
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8,),
                        down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",),
                        norm_num_groups=4, sample_size=8).eval()
    sched = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                          set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet, scheduler=sched,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_stable_diffusion_pipeline_with_our_scheduler_equals_guided_sample(tmp_path):
    pipe = _tiny_sd(tmp_path)
    den = from_diffusers(pipe)
    assert "encoder_hidden_states" in den.cond_keys
    pipe.scheduler = DiffinferScheduler.from_scheduler(pipe.scheduler, solver="dpmpp-2m", grid="logsnr")
    latents = _noise((2, 4, 8, 8))
    out = pipe(["a cat", "a dog"], num_inference_steps=4, guidance_scale=3.0, latents=latents,
               output_type="latent").images
    with torch.no_grad():
        cond, null = pipe.encode_prompt(["a cat", "a dog"], "cpu", 1, True, None)
    guided = ClassifierFreeGuidance(den.bind(encoder_hidden_states=cond), 3.0, null_label=null[:1],
                                    cond_key="encoder_hidden_states")  # a [1, ...] null condition broadcasts
    x_T = latents * pipe.scheduler.init_noise_sigma
    res = di.sample(guided, x_T=x_T, solver="dpmpp-2m", ts=di.grids.logsnr(den.process, 4))
    torch.testing.assert_close(res.x, out, rtol=1e-5, atol=1e-5)
    assert res.nfe == 4


def test_flux_style_flow_transformer_matches_flow_match_euler():
    from diffusers import FluxTransformer2DModel
    torch.manual_seed(0)
    net = FluxTransformer2DModel(patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=8,
                                 num_attention_heads=2, joint_attention_dim=16, pooled_projection_dim=16,
                                 guidance_embeds=False, axes_dims_rope=(2, 2, 4)).eval()
    B, S, T = 2, 16, 3
    cond = dict(encoder_hidden_states=_noise((B, T, 16), 1), pooled_projections=_noise((B, 16), 2),
                img_ids=torch.zeros(S, 3), txt_ids=torch.zeros(T, 3))
    sched = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True)
    mu = flow_mu(sched, S)
    den = from_diffusers(net, sched, cond=cond, mu=mu)
    assert isinstance(den.process, di.RectifiedFlow) and den.prediction == "velocity"
    x_T = _noise((B, S, 4), 3)
    res = di.sample(den, x_T=x_T, solver="euler", steps=4)  # the scheduler's mu-shifted grid
    sched.set_timesteps(4, mu=mu)
    x = x_T
    with torch.no_grad():
        for t in sched.timesteps:  # as FluxPipeline: the transformer takes t / 1000
            v = net(x, timestep=(t / 1000).expand(B), return_dict=False, **cond)[0]
            x = sched.step(v, t, x).prev_sample
    torch.testing.assert_close(res.x, x, rtol=1e-4, atol=1e-4)


def test_sd3_style_transformer_with_a_shifted_flow_scheduler():
    from diffusers import SD3Transformer2DModel
    torch.manual_seed(0)
    net = SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=4, num_layers=1, attention_head_dim=8,
                                num_attention_heads=2, joint_attention_dim=16, caption_projection_dim=16,
                                pooled_projection_dim=16, out_channels=4).eval()
    cond = dict(encoder_hidden_states=_noise((2, 3, 16), 1), pooled_projections=_noise((2, 16), 2))
    sched = FlowMatchEulerDiscreteScheduler(shift=3.0)
    den = from_diffusers(net, sched, cond=cond)
    assert float(den.time_input(torch.tensor(0.5, dtype=torch.float64))) == 500.0  # SD3 takes sigma * 1000
    x_T = _noise((2, 4, 8, 8), 3)
    res = di.sample(den, x_T=x_T, solver="euler", steps=3)
    sched.set_timesteps(3)
    x = x_T
    with torch.no_grad():
        for t in sched.timesteps:  # as StableDiffusion3Pipeline
            x = sched.step(net(x, timestep=t.expand(2), return_dict=False, **cond)[0], t, x).prev_sample
    torch.testing.assert_close(res.x, x, rtol=1e-4, atol=1e-4)
    # the pipeline-side view of a swapped scheduler reads its source scheduler
    ours = DiffinferScheduler.from_scheduler(sched, solver="unipc")
    assert isinstance(from_diffusers(net, ours, cond=cond).process, di.RectifiedFlow)
    ours.set_timesteps(3)
    torch.testing.assert_close(ours.ts, res.ts)
