"""Tests for workloads/: GPT presets, the reference decoder, its exports and the HF GPT-2 import."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from workloads import (
    GPT,
    PRESETS,
    ROLES,
    DecoderShape,
    get_config,
    named_weight_matrices,
    round_weights_to_bf16,
)
from workloads.models.export import (
    INPUT_NAMES,
    OUTPUT_NAMES,
    example_decode_inputs,
    export_decode_onnx,
    export_decode_torch,
)
from workloads.models.hf import config_from_hf, from_hf_gpt2

SMALL = ("tiny", "tiny-wide")
PAPER_PRESETS = {
    # name: (n_layer, d_model, n_head, d_head, n_ctx)
    "gpt2-small": (12, 768, 12, 64, 1024),
    "gpt2-medium": (24, 1024, 16, 64, 1024),
    "gpt2-large": (36, 1280, 20, 64, 1024),
    "gpt2-xl": (48, 1600, 25, 64, 1024),
    "gpt3-small": (12, 768, 12, 64, 2048),
    "gpt3-medium": (24, 1024, 16, 64, 2048),
    "gpt3-large": (24, 1536, 16, 96, 2048),
    "gpt3-xl": (24, 2048, 24, 128, 2048),
}


@pytest.fixture(scope="module", params=SMALL)
def model(request: pytest.FixtureRequest) -> GPT:
    return GPT.from_seed(get_config(request.param), seed=0)


def _prompt(cfg: DecoderShape, length: int, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, cfg.vocab, (1, length), generator=gen)


# ---- presets and parameter counts ---------------------------------------------------------


def test_presets_are_the_eight_paper_models_plus_tiny() -> None:
    assert set(PRESETS) == set(PAPER_PRESETS) | set(SMALL)
    for name, (n_layer, d_model, n_head, d_head, n_ctx) in PAPER_PRESETS.items():
        cfg = get_config(name)
        assert cfg.name == name
        got = (cfg.n_layer, cfg.d_model, cfg.n_head, cfg.d_head, cfg.n_ctx)
        assert got == (n_layer, d_model, n_head, d_head, n_ctx)
        assert cfg.vocab == 50257 and cfg.d_ff == 4 * d_model and cfg.norm_eps == 1e-5
    assert get_config("gpt3-xl").d_attn == 3072 != get_config("gpt3-xl").d_model
    tiny, wide = get_config("tiny"), get_config("tiny-wide")
    assert (tiny.n_layer, tiny.d_model, tiny.n_head, tiny.d_head, tiny.vocab, tiny.n_ctx) == (2, 64, 4, 16, 256, 64)
    assert (wide.n_layer, wide.d_model, wide.n_head, wide.d_head) == (2, 64, 2, 48)
    assert wide.d_attn != wide.d_model


def test_unknown_preset_error_lists_known_names() -> None:
    with pytest.raises(ValueError, match="gpt2-small.*gpt3-xl"):
        get_config("gpt4")


def test_config_is_frozen_and_validated() -> None:
    cfg = get_config("tiny")
    with pytest.raises(AttributeError):
        cfg.n_layer = 3  # type: ignore[misc]
    with pytest.raises(ValueError, match="n_head"):
        DecoderShape(name="bad", n_layer=1, d_model=8, n_head=0, d_head=4, vocab=8, n_ctx=8)


@pytest.mark.parametrize("fields, match", [
    (dict(n_layer=0), "n_layer must be a positive int"),
    (dict(n_head=3), "n_head 3 does not divide d_model 8; give d_head"),
    (dict(n_head=4, n_kv_head=3), "n_kv_head 3 must divide n_head 4"),
    (dict(norm="batchnorm"), "norm 'batchnorm'.*layernorm, rmsnorm"),
    (dict(norm_eps=0.0), "norm_eps must be > 0"),
    (dict(rope_theta=10000.0, d_head=3), "rotary positions need an even d_head"),
    (dict(pos_rows=-1), "pos_rows must be an int >= 0"),
    (dict(pos_rows=4), "table of 4 rows cannot cover n_ctx 8"),
    (dict(gated_mlp=1), "gated_mlp must be True or False"),
])
def test_shape_validation_names_the_field_and_the_fix(fields: dict, match: str) -> None:
    from pimsim.errors import UserError

    kw = dict(name="bad", n_layer=1, d_model=8, n_head=2, vocab=8, n_ctx=8) | fields
    with pytest.raises(UserError, match=match):
        DecoderShape(**kw)


def test_shape_defaults_are_the_gpt2_layout() -> None:
    s = DecoderShape(name="s", n_layer=1, d_model=8, n_head=2, vocab=8, n_ctx=16)
    assert (s.n_kv_head, s.d_head, s.d_ff, s.pos_rows) == (2, 4, 32, 16) and s.is_gpt_layout
    rot = DecoderShape(name="r", n_layer=1, d_model=8, n_head=2, vocab=8, n_ctx=16, rope_theta=1e4)
    assert rot.pos_rows == 0 and not rot.is_gpt_layout
    with pytest.raises(ValueError, match="not a GPT-2 layout"):
        GPT(rot, device="meta")


def test_gpt2_small_param_count_is_124439808() -> None:
    cfg = get_config("gpt2-small")
    assert cfg.n_params == 124_439_808
    assert cfg.weight_bytes_bf16 == 2 * 124_439_808
    assert cfg.kv_bytes_per_token() == 2 * 12 * 768 * 2  # K and V, 12 layers, bf16
    assert get_config("gpt3-xl").kv_bytes_per_token() == 2 * 24 * 3072 * 2


def _param_formula(cfg: DecoderShape) -> int:
    d, a, f, L = cfg.d_model, cfg.n_head * cfg.d_head, 4 * cfg.d_model, cfg.n_layer
    per_layer = 4 * d + 3 * (d * a + a) + (a * d + d) + (d * f + f) + (f * d + d)
    return cfg.vocab * d + cfg.n_ctx * d + L * per_layer + 2 * d


@pytest.mark.parametrize("name", list(PRESETS))
def test_param_count_matches_formula(name: str) -> None:
    cfg = get_config(name)
    assert cfg.n_params == _param_formula(cfg)


def test_param_count_matches_constructed_model(model: GPT) -> None:
    assert sum(p.numel() for p in model.parameters()) == model.cfg.n_params
    # the LM head is tied: no separate parameter for it
    assert not any("head" in name for name, _ in model.named_parameters())


def test_shapes_with_d_attn_not_d_model() -> None:
    m = GPT.from_seed(get_config("tiny-wide"))
    blk = m.h[0]
    assert blk.attn.q.weight.shape == (96, 64) and blk.attn.q.bias.shape == (96,)
    assert blk.attn.out.weight.shape == (64, 96) and blk.attn.out.bias.shape == (64,)
    assert blk.mlp.up.weight.shape == (256, 64) and blk.mlp.down.weight.shape == (64, 256)


# ---- deterministic initialisation -----------------------------------------------------------


def test_same_seed_same_weights_independent_of_global_rng() -> None:
    cfg = get_config("tiny")
    torch.manual_seed(123)
    a = GPT.from_seed(cfg, seed=7)
    torch.manual_seed(456)
    torch.randn(1000)
    b = GPT.from_seed(cfg, seed=7)
    for (na, pa), (nb, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert na == nb and torch.equal(pa, pb)


def test_different_seed_different_weights() -> None:
    cfg = get_config("tiny")
    a, b = GPT.from_seed(cfg, seed=0), GPT.from_seed(cfg, seed=1)
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert not torch.equal(pa, pb), name


def test_init_statistics(model: GPT) -> None:
    for name, p in model.named_parameters():
        if p.numel() < 1000:
            continue
        assert abs(float(p.std()) - 0.02) < 0.003, name
    ln_w = model.h[0].ln_1.weight
    assert abs(float(ln_w.mean()) - 1.0) < 0.02 and float(ln_w.std()) > 0.005
    assert float(model.h[0].attn.q.bias.abs().max()) > 0  # biases are not zero


def test_from_seed_dtype_bf16() -> None:
    m = GPT.from_seed(get_config("tiny"), dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in m.parameters())


# ---- decode_step vs full forward ----------------------------------------------------------


@torch.no_grad()
def test_decode_steps_match_full_forward(model: GPT) -> None:
    cfg = model.cfg
    T = 12
    ids = _prompt(cfg, T)
    logits_full, k_full, v_full = model(ids)
    assert logits_full.shape == (1, T, cfg.vocab)
    assert k_full.shape == v_full.shape == (cfg.n_layer, cfg.n_head, T, cfg.d_head)
    past_k, past_v = model.empty_kv()
    for t in range(T):
        logits, past_k, past_v = model.decode_step(ids[:, t : t + 1], t, past_k, past_v)
        assert logits.shape == (1, cfg.vocab)
        assert past_k.shape == (cfg.n_layer, cfg.n_head, t + 1, cfg.d_head)
        torch.testing.assert_close(logits[0], logits_full[0, t], atol=1e-5, rtol=0)
    torch.testing.assert_close(past_k, k_full, atol=1e-5, rtol=0)
    torch.testing.assert_close(past_v, v_full, atol=1e-5, rtol=0)


@torch.no_grad()
def test_decode_step_position_as_tensor_equals_int(model: GPT) -> None:
    ids = _prompt(model.cfg, 4)
    _, past_k, past_v = model(ids[:, :3])
    a = model.decode_step(ids[:, 3:], 3, past_k, past_v)
    b = model.decode_step(ids[:, 3:], torch.tensor([3]), past_k, past_v)
    for x, y in zip(a, b):
        assert torch.equal(x, y)


@torch.no_grad()
def test_present_is_past_concat_new(model: GPT) -> None:
    ids = _prompt(model.cfg, 5)
    _, past_k, past_v = model(ids[:, :4])
    _, present_k, present_v = model.decode_step(ids[:, 4:], 4, past_k, past_v)
    assert torch.equal(present_k[:, :, :4], past_k) and torch.equal(present_v[:, :, :4], past_v)


@torch.no_grad()
def test_forward_matches_naive_reference(model: GPT) -> None:
    """An independent, loop-per-head implementation of the same maths."""
    cfg = model.cfg
    ids = _prompt(cfg, 6)[0]
    T = ids.shape[0]
    h = model.wte.weight[ids] + model.wpe.weight[:T]
    for blk in model.h:
        a = F.layer_norm(h, (cfg.d_model,), blk.ln_1.weight, blk.ln_1.bias, cfg.norm_eps)
        q, k, v = (a @ lin.weight.T + lin.bias for lin in (blk.attn.q, blk.attn.k, blk.attn.v))
        heads = []
        for hd in range(cfg.n_head):
            cols = slice(hd * cfg.d_head, (hd + 1) * cfg.d_head)
            s = q[:, cols] @ k[:, cols].T / math.sqrt(cfg.d_head)
            s = s + torch.triu(torch.full((T, T), float("-inf")), diagonal=1)
            heads.append(torch.softmax(s, dim=-1) @ v[:, cols])
        h = h + torch.cat(heads, dim=1) @ blk.attn.out.weight.T + blk.attn.out.bias
        m = F.layer_norm(h, (cfg.d_model,), blk.ln_2.weight, blk.ln_2.bias, cfg.norm_eps)
        u = m @ blk.mlp.up.weight.T + blk.mlp.up.bias
        g = 0.5 * u * (1 + torch.tanh(math.sqrt(2 / math.pi) * (u + 0.044715 * u**3)))
        h = h + g @ blk.mlp.down.weight.T + blk.mlp.down.bias
    logits = F.layer_norm(h, (cfg.d_model,), model.ln_f.weight, model.ln_f.bias, cfg.norm_eps) @ model.wte.weight.T
    torch.testing.assert_close(model(ids[None])[0][0], logits, atol=1e-5, rtol=0)


@torch.no_grad()
def test_generate_greedy_uses_argmax_of_forward() -> None:
    m = GPT.from_seed(get_config("tiny"), seed=3)
    prompt = [5, 17, 42]
    tokens, step_logits = m.generate_greedy(prompt, 6)
    assert len(tokens) == 6 and step_logits.shape == (6, m.cfg.vocab)
    seq = torch.tensor([prompt + tokens])
    full_logits = m(seq)[0][0]
    for i, tok in enumerate(tokens):
        pos = len(prompt) - 1 + i
        torch.testing.assert_close(step_logits[i], full_logits[pos], atol=1e-5, rtol=0)
        assert tok == int(torch.argmax(full_logits[pos]))


def test_context_overflow_rejected() -> None:
    m = GPT.from_seed(get_config("tiny"))
    with pytest.raises(ValueError, match="n_ctx"):
        m(torch.zeros(1, 65, dtype=torch.long))
    with pytest.raises(ValueError, match="n_ctx"):
        m.generate_greedy([1] * 60, 10)
    k, v = m.empty_kv()
    with pytest.raises(ValueError, match="position"):
        m.decode_step(torch.zeros(1, 1, dtype=torch.long), 64, k, v)


# ---- bf16 rounding and weight matrices -----------------------------------------------------


def test_bf16_rounding_is_exact_in_bf16_and_leaves_original() -> None:
    m = GPT.from_seed(get_config("tiny"))
    r = m.bf16_rounded()
    for (name, p), q in zip(m.named_parameters(), r.parameters()):
        assert q.dtype == torch.float32
        assert torch.equal(q, p.to(torch.bfloat16).float()), name
    assert not torch.equal(m.h[0].attn.q.weight, r.h[0].attn.q.weight)  # original untouched
    assert round_weights_to_bf16(m) is m
    assert torch.equal(m.h[0].attn.q.weight, r.h[0].attn.q.weight)


def test_named_weight_matrices_cover_every_matmul() -> None:
    m = GPT.from_seed(get_config("tiny-wide"))
    mats = list(named_weight_matrices(m))
    assert len(mats) == 6 * m.cfg.n_layer + 1
    assert {role for _, role, _ in mats} == set(ROLES)
    by_name = {name: (role, w) for name, role, w in mats}
    assert by_name["h.1.attn.q"][0] == "qkv_q" and by_name["h.1.attn.q"][1] is m.h[1].attn.q.weight
    assert by_name["h.0.attn.out"][1].shape == (64, 96)
    assert by_name["lm_head"][1] is m.wte.weight
    n_matrix_params = sum(w.numel() for _, _, w in mats)
    small = sum(p.numel() for n, p in m.named_parameters() if p.dim() == 1 or n == "wpe.weight")
    assert n_matrix_params + small == m.cfg.n_params


# ---- exports ---------------------------------------------------------------------------------


@torch.no_grad()
def test_onnx_export_matches_torch_on_onnxruntime(model: GPT, tmp_path) -> None:
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    path = tmp_path / f"{model.cfg.name}.onnx"
    export_decode_onnx(model, path, past_len=5)

    proto = onnx.load(str(path))
    assert [i.name for i in proto.graph.input] == list(INPUT_NAMES)
    assert [o.name for o in proto.graph.output] == list(OUTPUT_NAMES)
    assert max(op.version for op in proto.opset_import if op.domain in ("", "ai.onnx")) >= 17
    # weights are initializers, each stored once (the tied head re-uses wte)
    n_init = sum(math.prod(t.dims) for t in proto.graph.initializer)
    assert n_init == model.cfg.n_params
    past_dim = proto.graph.input[2].type.tensor_type.shape.dim[2]
    assert past_dim.dim_param == "past_len"

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for past_len in (0, 5, 11):  # the cache length is dynamic
        args = example_decode_inputs(model, past_len, seed=past_len)
        got = sess.run(None, {n: a.numpy() for n, a in zip(INPUT_NAMES, args)})
        want = model.decode_step(*args)
        for g, w in zip(got, want):
            torch.testing.assert_close(torch.from_numpy(g), w, atol=1e-4, rtol=0)


@torch.no_grad()
def test_torch_export_matches_decode_step(model: GPT) -> None:
    ep = export_decode_torch(model, past_len=4)
    assert isinstance(ep, torch.export.ExportedProgram)
    step = ep.module()
    for past_len in (4, 9):  # dynamic past_len
        args = example_decode_inputs(model, past_len, seed=past_len)
        for g, w in zip(step(*args), model.decode_step(*args)):
            torch.testing.assert_close(g, w, atol=1e-5, rtol=0)


@torch.no_grad()
def test_torch_export_static_for_short_past() -> None:
    m = GPT.from_seed(get_config("tiny"))
    ep = export_decode_torch(m, past_len=0)
    args = example_decode_inputs(m, 0)
    for g, w in zip(ep.module()(*args), m.decode_step(*args)):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=0)


# ---- Hugging Face GPT-2 ------------------------------------------------------------------------


def _fake_hf_gpt2(seed: int = 0) -> SimpleNamespace:
    """A GPT2LMHeadModel look-alike: HF's attribute names and Conv1D layout ([in, out])."""
    gen = torch.Generator().manual_seed(seed)
    d, L, H, V, P, f = 32, 2, 4, 50, 16, 80

    def t(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen) * 0.1

    def conv(n_in: int, n_out: int) -> SimpleNamespace:
        return SimpleNamespace(weight=t(n_in, n_out), bias=t(n_out))

    def ln() -> SimpleNamespace:
        return SimpleNamespace(weight=1 + t(d), bias=t(d))

    blocks = [
        SimpleNamespace(ln_1=ln(), attn=SimpleNamespace(c_attn=conv(d, 3 * d), c_proj=conv(d, d)),
                        ln_2=ln(), mlp=SimpleNamespace(c_fc=conv(d, f), c_proj=conv(f, d)))
        for _ in range(L)
    ]
    wte = SimpleNamespace(weight=t(V, d))
    tr = SimpleNamespace(wte=wte, wpe=SimpleNamespace(weight=t(P, d)), h=blocks, ln_f=ln())
    config = SimpleNamespace(n_layer=L, n_embd=d, n_head=H, n_inner=f, vocab_size=V, n_positions=P,
                             layer_norm_epsilon=1e-5, activation_function="gelu_new")
    return SimpleNamespace(config=config, transformer=tr, lm_head=SimpleNamespace(weight=wte.weight, bias=None))


def _fake_hf_forward(hf: SimpleNamespace, ids: torch.Tensor) -> torch.Tensor:
    """GPT-2 as HF computes it, from the packed Conv1D weights."""
    c, tr = hf.config, hf.transformer
    d, H = c.n_embd, c.n_head
    T = ids.shape[0]
    x = tr.wte.weight[ids] + tr.wpe.weight[:T]
    mask = torch.tril(torch.ones(T, T, dtype=torch.bool))
    for b in tr.h:
        a = F.layer_norm(x, (d,), b.ln_1.weight, b.ln_1.bias, c.layer_norm_epsilon)
        q, k, v = (a @ b.attn.c_attn.weight + b.attn.c_attn.bias).split(d, dim=1)
        q, k, v = (z.view(T, H, d // H).transpose(0, 1) for z in (q, k, v))
        w = (q @ k.transpose(-1, -2)) / (d // H) ** 0.5
        w = torch.where(mask, w, torch.finfo(w.dtype).min).softmax(-1)
        o = (w @ v).transpose(0, 1).reshape(T, d)
        x = x + o @ b.attn.c_proj.weight + b.attn.c_proj.bias
        m = F.layer_norm(x, (d,), b.ln_2.weight, b.ln_2.bias, c.layer_norm_epsilon)
        h = F.gelu(m @ b.mlp.c_fc.weight + b.mlp.c_fc.bias, approximate="tanh")
        x = x + h @ b.mlp.c_proj.weight + b.mlp.c_proj.bias
    x = F.layer_norm(x, (d,), tr.ln_f.weight, tr.ln_f.bias, c.layer_norm_epsilon)
    return x @ hf.lm_head.weight.T


@torch.no_grad()
def test_from_hf_layout_matches_hf_maths() -> None:
    hf = _fake_hf_gpt2()
    m = from_hf_gpt2(hf)
    assert m.cfg.d_ff == 80 and m.cfg.d_head == 8
    ids = torch.tensor([3, 1, 4, 1, 5, 9, 2, 6])
    torch.testing.assert_close(m(ids[None])[0][0], _fake_hf_forward(hf, ids), atol=1e-5, rtol=0)


def test_config_from_hf_rejects_other_activations() -> None:
    cfg = _fake_hf_gpt2().config
    cfg.activation_function = "relu"
    with pytest.raises(ValueError, match="activation"):
        config_from_hf(cfg)


@torch.no_grad()
def test_from_hf_gpt2_matches_transformers() -> None:
    transformers = pytest.importorskip("transformers")
    hf_cfg = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=256, n_positions=64,
                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(hf_cfg).eval()
    gen = torch.Generator().manual_seed(0)
    for p in hf.parameters():  # HF zero-inits biases; randomise everything so bias bugs show
        p.copy_(p + 0.02 * torch.randn(p.shape, generator=gen))
    m = from_hf_gpt2(hf)
    assert m.cfg == config_from_hf(hf_cfg)
    ids = torch.tensor([[1, 2, 3, 200, 17, 63, 5]])
    want = hf(ids).logits
    got, _, _ = m(ids)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
    tokens, _ = m.generate_greedy(ids[0, :3], 4)
    hf_tokens = hf.generate(ids[:, :3], max_new_tokens=4, do_sample=False)[0, 3:].tolist()
    assert tokens == hf_tokens
