"""PPO math (genrec/rl/ppo.py) against hand-written references, and the rollout generator against
the model's own forward pass. No Ray."""
import math

import numpy as np
import pytest
import torch

from genrec.rl import ppo


def _random_batch(seed, batch=5, steps=9):
    g = torch.Generator().manual_seed(seed)
    rewards = torch.randn(batch, steps, generator=g, dtype=torch.float64)
    values = torch.randn(batch, steps, generator=g, dtype=torch.float64)
    lengths = torch.randint(1, steps + 1, (batch,), generator=g)
    mask = (torch.arange(steps)[None] < lengths[:, None]).double()
    return rewards * mask, values, mask, lengths


def _gae_reference(rewards, values, lengths, gamma, lam):
    """Per sequence, in plain Python floats, straight from the definition (no masks)."""
    adv = np.zeros(rewards.shape)
    for b in range(rewards.shape[0]):
        n = int(lengths[b])
        for t in range(n):
            total = 0.0
            for k in range(t, n):
                next_v = float(values[b, k + 1]) if k + 1 < n else 0.0
                delta = float(rewards[b, k]) + gamma * next_v - float(values[b, k])
                total += (gamma * lam) ** (k - t) * delta
            adv[b, t] = total
    return adv


@pytest.mark.parametrize("seed,gamma,lam", [(0, 1.0, 0.95), (1, 0.99, 0.9), (2, 0.9, 1.0), (3, 1.0, 0.0)])
def test_gae_equals_the_definition_on_cpu(seed, gamma, lam):
    rewards, values, mask, lengths = _random_batch(seed)
    adv, ret = ppo.gae(rewards, values, mask, gamma, lam)
    expected = _gae_reference(rewards, values, lengths, gamma, lam)
    np.testing.assert_allclose(adv.numpy(), expected, atol=1e-6)
    np.testing.assert_allclose(ret.numpy(), (expected + values.numpy() * mask.numpy()), atol=1e-6)
    assert float((adv * (1 - mask)).abs().sum()) == 0.0  # nothing after a response ends


def test_clipped_policy_loss_equals_formula_and_has_no_gradient_outside_the_clip_range():
    eps = 0.2
    old = torch.zeros(1, 6)
    # ratios 0.5, 0.9, 1.1, 1.5 with advantages chosen so both clipped and unclipped terms win
    log_ratio = torch.log(torch.tensor([[0.5, 0.9, 1.1, 1.5, 1.5, 0.5]]))
    adv = torch.tensor([[1.0, 1.0, -1.0, 1.0, -1.0, -1.0]])
    logp = log_ratio.clone().requires_grad_(True)
    mask = torch.ones(1, 6)
    loss, stats = ppo.policy_loss(logp, old, adv, mask, eps)
    ratio = log_ratio.exp()
    per_token = torch.maximum(-adv * ratio, -adv * ratio.clamp(1 - eps, 1 + eps))
    assert torch.allclose(loss, per_token.mean())
    loss.backward()
    grad = logp.grad[0]
    # clipped term wins (flat): ratio 1.5 with A > 0, ratio 0.5 with A < 0
    assert grad[3] == 0 and grad[5] == 0
    # inside the range, or outside on the side that makes the objective worse: gradient -A·ratio/n
    for i in (0, 1, 2, 4):
        assert torch.isclose(grad[i], -adv[0, i] * ratio[0, i] / 6)
    assert math.isclose(float(stats["clip_fraction"]), 2 / 6, rel_tol=1e-6)


def test_importance_weights_scale_each_token_and_are_capped():
    """Off-policy: tokens sampled by an older policy; weight = pi_old / pi_sampler, truncated at the cap."""
    old = torch.log(torch.tensor([[0.5, 0.4, 0.9, 0.3]]))
    sampler = torch.log(torch.tensor([[0.5, 0.8, 0.3, 0.3]]))
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    w = ppo.importance_weights(old, sampler, mask, cap=2.0)
    assert torch.allclose(w, torch.tensor([[1.0, 0.5, 2.0, 0.0]]))  # 0.9 / 0.3 = 3 is capped at 2

    logp = torch.log(torch.tensor([[0.55, 0.3, 0.95, 0.3]])).requires_grad_(True)
    adv = torch.tensor([[1.0, -1.0, 1.0, 1.0]])
    weighted, _ = ppo.policy_loss(logp, old, adv, mask, 0.2, w)
    (grad_w,) = torch.autograd.grad(weighted, logp)
    plain, _ = ppo.policy_loss(logp, old, adv, mask, 0.2)
    (grad,) = torch.autograd.grad(plain, logp)
    assert torch.allclose(grad_w, grad * w)  # each token's gradient scaled by its weight, no gradient through w
    ones, _ = ppo.policy_loss(logp, old, adv, mask, 0.2, torch.ones_like(mask))
    assert torch.allclose(ones, plain)


def test_masked_tokens_do_not_count_in_losses():
    g = torch.Generator().manual_seed(0)
    logp, old, adv = (torch.randn(3, 4, generator=g) for _ in range(3))
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]], dtype=torch.float32)
    changed = torch.where(mask.bool(), logp, logp + 100.0)
    a, _ = ppo.policy_loss(logp, old, adv, mask, 0.2)
    b, _ = ppo.policy_loss(changed, old, adv, mask, 0.2)
    assert torch.allclose(a, b)


def test_value_loss_clipping():
    old = torch.zeros(1, 2)
    values = torch.tensor([[1.0, 0.1]], requires_grad=True)
    returns = torch.tensor([[2.0, 1.0]])
    loss, _ = ppo.value_loss(values, old, returns, torch.ones(1, 2), clip=0.2)
    expected = 0.5 * ((max((1 - 2) ** 2, (0.2 - 2) ** 2) + max((0.1 - 1) ** 2, (0.1 - 1) ** 2)) / 2)
    assert math.isclose(float(loss.detach()), expected, rel_tol=1e-6)
    loss.backward()
    assert values.grad[0, 0] == 0  # the clipped value was the worse one: no gradient


def test_kl_estimators():
    logp = torch.log(torch.tensor([0.5, 0.2]))
    ref = torch.log(torch.tensor([0.25, 0.4]))
    assert torch.allclose(ppo.kl_k1(logp, ref), logp - ref)
    r = (ref - logp).exp()
    assert torch.allclose(ppo.kl_k3(logp, ref), (r - 1) - r.log())
    assert (ppo.kl_k3(logp, ref) >= 0).all()
    # both are unbiased: the expectation under p of k1 and k3 is KL(p || q) for full distributions
    p = torch.tensor([0.5, 0.3, 0.2])
    q = torch.tensor([0.2, 0.5, 0.3])
    kl = float((p * (p / q).log()).sum())
    assert math.isclose(float((p * ppo.kl_k1(p.log(), q.log())).sum()), kl, rel_tol=1e-5)
    assert math.isclose(float((p * ppo.kl_k3(p.log(), q.log())).sum()), kl, rel_tol=1e-5)


def test_adaptive_kl_controller_moves_beta_toward_the_target():
    high = ppo.AdaptiveKLController(0.1, target=1.0, horizon=100)
    high.update(current_kl=5.0, num_samples=10)  # error clipped to +0.2
    assert math.isclose(high.beta, 0.1 * (1 + 0.2 * 10 / 100))
    low = ppo.AdaptiveKLController(0.1, target=1.0, horizon=100)
    low.update(current_kl=0.5, num_samples=10)
    assert math.isclose(low.beta, 0.1 * (1 - 0.5 * 10 / 100 * 0.4))  # error -0.5 clipped to -0.2
    on = ppo.AdaptiveKLController(0.1, target=1.0, horizon=100)
    on.update(1.0, 10)
    assert on.beta == 0.1
    fixed = ppo.FixedKLController(0.1)
    fixed.update(100.0, 10)
    assert fixed.beta == 0.1
    restored = ppo.AdaptiveKLController(1.0, 1.0, 100)
    restored.load_state_dict(high.state_dict())
    assert restored.beta == high.beta


def test_per_token_rewards_put_the_score_on_the_last_token():
    logp = torch.tensor([[-1.0, -2.0, -3.0], [-1.0, -1.0, 0.0]])
    ref = torch.tensor([[-1.5, -2.0, -2.0], [-2.0, -1.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    rewards, kl = ppo.per_token_rewards(torch.tensor([10.0, 20.0]), logp, ref, mask, beta=0.5)
    expected = -0.5 * (logp - ref) * mask
    expected[0, 2] += 10.0
    expected[1, 1] += 20.0
    assert torch.allclose(rewards, expected)
    assert torch.allclose(kl, (logp - ref) * mask)


def test_group_advantages_compare_each_response_with_its_own_prompts_group():
    rewards = torch.tensor([1.0, 2.0, 3.0, 6.0, 5.0, 5.0, 5.0, 5.0, 0.0, 0.0, 4.0, 8.0])
    for method in ("grpo", "rloo"):
        adv = ppo.group_advantages(rewards, 4, method).view(3, 4)
        expected = torch.zeros(3, 4)
        for g, group in enumerate(rewards.view(3, 4).tolist()):
            for i, r in enumerate(group):
                others = [x for j, x in enumerate(group) if j != i]
                if method == "rloo":
                    expected[g, i] = r - sum(others) / len(others)
                else:
                    expected[g, i] = (r - np.mean(group)) / (np.std(group) + 1e-6)
        assert torch.allclose(adv, expected, atol=1e-5), method
        assert torch.allclose(adv.sum(1), torch.zeros(3), atol=1e-5)  # a baseline per prompt: zero-sum groups
    assert torch.equal(ppo.group_advantages(rewards, 4, "grpo")[4:8], torch.zeros(4))  # all equal: no signal
    with pytest.raises(ValueError, match="groups of 5"):
        ppo.group_advantages(rewards, 5, "grpo")
    with pytest.raises(ValueError, match="at least 2"):
        ppo.group_advantages(rewards, 1, "rloo")


def test_whiten_and_score_normalisation():
    x = torch.tensor([[1.0, 2.0, 3.0, 99.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    w = ppo.whiten(x, mask)
    assert abs(float(ppo.masked_mean(w, mask))) < 1e-6 and w[0, 3] == 0
    moments = ppo.RunningMoments()
    first, second = torch.tensor([1.0, 3.0]), torch.tensor([5.0, 7.0, 9.0])
    ppo.normalize_scores(first, moments, clip=0)
    out = ppo.normalize_scores(second, moments, clip=1.0)
    both = torch.cat([first, second]).double()
    assert math.isclose(moments.mean, float(both.mean())) and math.isclose(moments.var, float(both.var(unbiased=False)))
    assert float(out.max()) == 1.0  # clipped


def test_token_log_probs_and_entropy():
    logits = torch.randn(2, 3, 7)
    tokens = torch.randint(0, 7, (2, 3))
    lp = ppo.token_log_probs(logits, tokens)
    assert torch.allclose(lp, torch.distributions.Categorical(logits=logits).log_prob(tokens), atol=1e-6)
    assert torch.allclose(ppo.entropy_from_logits(logits), torch.distributions.Categorical(logits=logits).entropy(), atol=1e-5)


# ------------------------------------------------------------------------------ rollout generator
def _models():
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    llama = LlamaConfig(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=4, pad_token_id=0, eos_token_id=2)
    qwen = Qwen2Config(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, pad_token_id=0, eos_token_id=2)
    torch.manual_seed(0)
    return [LlamaForCausalLM._from_config(llama, attn_implementation="sdpa").eval(),
            Qwen2ForCausalLM._from_config(qwen, attn_implementation="sdpa").eval()]


@pytest.mark.parametrize("index", [0, 1], ids=["llama", "qwen2-gqa"])
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "modules"])
def test_rollout_log_probs_equal_the_models_forward(index, fused):
    from genrec.rl.rollout import RolloutGenerator

    model = _models()[index]
    with torch.no_grad():  # make EOS likely so some rows stop early
        model.lm_head.weight[2] += 0.8 * model.lm_head.weight.norm(dim=1).mean() / model.lm_head.weight[2].norm()
    gen = RolloutGenerator(model, pad_id=0, eos_id=2, cuda_graph=False)
    if not fused:
        gen._refresh_fused = lambda: setattr(gen, "_fused", None)
    prompts = [[1, 5, 6, 7], [1, 9], [1, 3, 4, 5, 6, 7, 8, 9, 10]]
    out = gen.generate(prompts, max_new_tokens=10, temperature=0.7, top_p=0.9, seed=3)
    again = gen.generate(prompts, max_new_tokens=10, temperature=0.7, top_p=0.9, seed=3)
    assert torch.equal(out.tokens, again.tokens)  # a seed repeats the draw
    _assert_log_probs_are_the_models(model, prompts, out, temperature=0.7)


def _assert_log_probs_are_the_models(model, prompts, out, temperature):
    """Each row ends at its first EOS (id 2) or runs to the limit, is padded (id 0) after it, and its
    log-probs are those of the model's own forward pass; some row stopped at EOS."""
    for row, prompt in enumerate(prompts):
        n = int(out.mask[row].sum())
        tokens = out.tokens[row, :n]
        ends_with_eos = bool(tokens[-1] == 2)
        assert bool(out.eos[row]) == ends_with_eos and (2 not in tokens[:-1].tolist())
        assert (out.tokens[row, n:] == 0).all() and (out.logp[row, n:] == 0).all()
        with torch.no_grad():
            logits = model(torch.tensor([prompt + tokens.tolist()])).logits[0, len(prompt) - 1: len(prompt) - 1 + n]
        expected = ppo.token_log_probs(logits[None] / temperature, tokens[None])[0]
        assert torch.allclose(out.logp[row, :n], expected, atol=1e-4)
    assert bool(out.eos.any())


class _RerunGraph:
    """A CUDA graph stand-in on a CPU: replay reruns the captured step on the same static buffers."""

    def __init__(self, step, static):
        for _ in range(2):  # the warm-up steps, on copies, as the real capture runs them
            step({name: buffer.clone() for name, buffer in static.items()})
        self.replay = lambda: step(static)


@pytest.mark.parametrize("index", [0, 1], ids=["llama", "qwen2-gqa"])
def test_cuda_graph_decode_path_emulated_on_cpu_samples_what_the_eager_step_does(index, monkeypatch):
    """The GPU rollout path (decode steps replayed from one capture over static buffers, plain-op
    attention over the whole rounded-up cache) run here with a stand-in for the graph: a step that
    read or wrote state outside the static buffers, or attended to an unwritten column, would make
    it differ from the eager step. Real CUDA graphs run in bench/gpu_ppo_rollout.sh."""
    from genrec.rl import rollout

    monkeypatch.setattr(rollout.RolloutGenerator, "_replays_graphs", lambda self, device: self.use_cuda_graph)
    monkeypatch.setattr(rollout.RolloutGenerator, "_one_op_attention", lambda self, device: False)
    monkeypatch.setattr(rollout, "_capture_cuda_graph", _RerunGraph)
    monkeypatch.setattr(torch.cuda, "manual_seed", torch.manual_seed)  # the graph path's generator is the default one
    model = _models()[index]
    with torch.no_grad():  # make EOS likely so some rows stop early
        model.lm_head.weight[2] += 0.8 * model.lm_head.weight.norm(dim=1).mean() / model.lm_head.weight[2].norm()
    graphed = rollout.RolloutGenerator(model, pad_id=0, eos_id=2, compile_cpu=False)
    eager = rollout.RolloutGenerator(model, pad_id=0, eos_id=2, cuda_graph=False, compile_cpu=False)
    prompts = [[1, 5, 6, 7], [1, 9], [1, 3, 4, 5, 6, 7, 8, 9, 10]]
    first = graphed.generate(prompts, max_new_tokens=12, temperature=0.7, top_p=0.9, seed=3)  # captures
    assert list(graphed._graphs) == [(3, 256, 0.7, 0.9)]  # batch, cache rounded up to 256 columns
    _assert_log_probs_are_the_models(model, prompts, first, temperature=0.7)
    # Replays draw the tokens the eager step draws for a seed, the capturing call included; a
    # narrower prompt batch fits the same 256-column cache and replays the same graph.
    again = graphed.generate(prompts, max_new_tokens=12, temperature=0.7, top_p=0.9, seed=3)
    narrow = [[1, 9, 4], [1, 2, 8], [1, 7, 7]]
    narrower = graphed.generate(narrow, max_new_tokens=12, temperature=0.7, top_p=0.9, seed=4)
    for seed, batch, out in ((3, prompts, first), (3, prompts, again), (4, narrow, narrower)):
        expected = eager.generate(batch, max_new_tokens=12, temperature=0.7, top_p=0.9, seed=seed)
        assert torch.equal(out.tokens, expected.tokens) and torch.equal(out.mask, expected.mask)
        assert torch.equal(out.eos, expected.eos) and torch.allclose(out.logp, expected.logp, atol=1e-5)
    assert len(graphed._graphs) == 1


@pytest.mark.parametrize("index,top_p,prompts", [(0, 1.0, [[1, 5, 6, 7], [1, 9], [1, 3, 4, 5, 6, 7, 8, 9, 10]]),
                                                 (1, 0.9, [[1, 5, 6, 7], [1, 9], [1, 3, 4, 5, 6, 7, 8, 9, 10]]),
                                                 (1, 1.0, [[1], [4]])],
                         ids=["llama", "qwen2-gqa-top-p", "one-token-prompts"])
def test_compiled_cpu_step_samples_what_the_eager_step_does(index, top_p, prompts):
    """The compiled decode step (the CPU default) and the eager one draw the same tokens for a seed
    and agree on their log-probs; one-token prompts start it on a one-column cache."""
    from genrec.rl.rollout import RolloutGenerator

    model = _models()[index]
    with torch.no_grad():  # make EOS likely so some rows stop early
        model.lm_head.weight[2] += 0.8 * model.lm_head.weight.norm(dim=1).mean() / model.lm_head.weight[2].norm()
    compiled = RolloutGenerator(model, pad_id=0, eos_id=2, cuda_graph=False)
    eager = RolloutGenerator(model, pad_id=0, eos_id=2, cuda_graph=False, compile_cpu=False)
    for seed in (3, 4):
        a = compiled.generate(prompts, max_new_tokens=10, temperature=0.7, top_p=top_p, seed=seed)
        b = eager.generate(prompts, max_new_tokens=10, temperature=0.7, top_p=top_p, seed=seed)
        assert compiled.compile_cpu  # it did not fall back
        assert torch.equal(a.tokens, b.tokens) and torch.equal(a.mask, b.mask) and torch.equal(a.eos, b.eos)
        assert torch.allclose(a.logp, b.logp, atol=1e-5)


def test_a_failed_compile_falls_back_to_the_eager_step(monkeypatch, caplog):
    from genrec.rl import rollout

    def broken(*args, **kwargs):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(rollout, "_compiled_decode", lambda: broken)
    model = _models()[0]
    prompts = [[1, 5, 6, 7], [1, 9]]
    gen = rollout.RolloutGenerator(model, pad_id=0, eos_id=2, cuda_graph=False)
    with caplog.at_level("WARNING", logger="genrec.rl"):
        out = gen.generate(prompts, max_new_tokens=6, seed=1)
    assert not gen.compile_cpu and "no compiler here" in caplog.text
    expected = rollout.RolloutGenerator(model, pad_id=0, eos_id=2, cuda_graph=False, compile_cpu=False)
    expected = expected.generate(prompts, max_new_tokens=6, seed=1)
    assert torch.equal(out.tokens, expected.tokens) and torch.allclose(out.logp, expected.logp)


def test_top_p_keeps_the_nucleus_only():
    from genrec.rl.rollout import sample_tokens

    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).repeat(2000, 1)
    tokens, logp = sample_tokens(logits, 1.0, 0.7, torch.Generator().manual_seed(0))
    counts = torch.bincount(tokens, minlength=4).float() / 2000
    assert counts[2] == 0 and counts[3] == 0  # 0.5 + 0.3 >= 0.7 already
    assert abs(float(counts[0]) - 0.5 / 0.8) < 0.05
    assert torch.allclose(logp, torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))[tokens], atol=1e-6)


def test_math_and_rollout_modules_import_neither_ray_nor_transformers():
    """ppo.py is pure math (docs/design.md), and bench/gpu_ppo_rollout.py runs rollout.py on a GPU box with no Ray."""
    import subprocess
    import sys

    code = ("import sys, genrec.rl.ppo, genrec.rl.rollout; "
            "bad = [m for m in ('ray', 'transformers', 'peft') if m in sys.modules]; print(bad); sys.exit(bool(bad))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
