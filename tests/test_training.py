"""The shared training helpers: optimiser choice, minimize (L-BFGS, Adam), chunked prediction."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from fastzsl._training import (  # noqa: E402
    LBFGS_MAX_VALUES, OPTIMIZERS, minimize, predict_in_chunks, resolve_optimizer,
)
from fastzsl.testing import assert_within_bound, gamma, matmul_error_bound  # noqa: E402


# --------------------------------------------------------------------- resolve_optimizer
def test_named_optimizers_are_kept_and_auto_switches_at_the_documented_size():
    assert OPTIMIZERS == ("auto", "lbfgs", "adam")
    assert resolve_optimizer("lbfgs", 10**9, 10**3) == "lbfgs"
    assert resolve_optimizer("adam", 2, 2) == "adam"
    assert resolve_optimizer("auto", 1000, LBFGS_MAX_VALUES // 1000) == "lbfgs"
    assert resolve_optimizer("auto", 1000, LBFGS_MAX_VALUES // 1000 + 1) == "adam"


@pytest.mark.parametrize("name", ["sgd", "LBFGS", "", None])
def test_unknown_optimizers_are_refused_by_name(name):
    with pytest.raises(ValueError, match=r"optimizer must be one of \('auto', 'lbfgs', "
                                         rf"'adam'\), got {name!r}"):
        resolve_optimizer(name, 10, 10)


# --------------------------------------------------------------------- minimize
def _least_squares(seed=0, n=50, d=4):
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(n, d))
    b = A @ rng.normal(size=d) + 0.1 * rng.normal(size=n)
    return A, b


def _problem(A, b, calls=None):
    """Convex mean squared error over the rows given; records the rows asked for."""
    A_t, b_t = torch.from_numpy(A), torch.from_numpy(b)
    p = torch.zeros(A.shape[1], dtype=torch.float64, requires_grad=True)

    def batch_loss(rows):
        if calls is not None:
            calls.append(rows)
        a, t = (A_t, b_t) if rows is None else (A_t[rows], b_t[rows])
        return ((a @ p - t) ** 2).mean()

    return p, batch_loss


def _run(batch_loss, p, n, optimizer, **options):
    settings = dict(max_iter=50, epochs=30, batch_size=8, lr=0.05, seed=0, progress=False,
                    desc="test")
    settings.update(options)
    return minimize(batch_loss, [p], n, optimizer=optimizer, **settings)


def test_lbfgs_finds_the_least_squares_solution_on_full_batches():
    A, b = _least_squares()
    calls = []
    p, batch_loss = _problem(A, b, calls)
    history = _run(batch_loss, p, len(b), "lbfgs")
    best = np.linalg.lstsq(A, b, rcond=None)[0]
    found = p.detach().numpy()
    # Not rounding but where the optimiser stops: torch's L-BFGS stops once an iteration
    # lowers the loss by less than tolerance_change (1e-12, _training.minimize). On a
    # quadratic with Hessian condition number kappa a descent step with an exact line
    # search lowers the gap f - f* by at least gap / kappa, so the gap left is at most
    # kappa * 1e-12; strong convexity (mu = 2 lambda_min(A^T A) / n) then gives
    # |p - p*|^2 <= 2 gap / mu. The float64 losses carry gamma_(n (d + 2)) of rounding.
    n, d = A.shape
    eig = np.linalg.eigvalsh(A.T @ A)
    kappa, mu = eig.max() / eig.min(), 2 * eig.min() / n
    f_star = np.mean((A @ best - b) ** 2)
    rounding = gamma(n * (d + 2), np.float64) * np.mean(
        (np.abs(A) @ np.abs(best) + np.abs(b)) ** 2)
    allowed_gap = kappa * 1e-12 + 2 * rounding
    gap = np.mean((A @ found - b) ** 2) - f_star
    assert gap <= allowed_gap
    assert np.linalg.norm(found - best) <= np.sqrt(2 * allowed_gap / mu)
    assert history[-1] - f_star <= allowed_gap
    # the first evaluation is at p = 0: mean(b^2), n positive terms in float64
    assert abs(history[0] - np.mean(b ** 2)) <= gamma(n + 1, np.float64) * np.mean(b ** 2)
    assert all(rows is None for rows in calls) and len(history) == len(calls)
    assert len(history) <= 50 * 5 // 4  # max_eval


def test_adam_decreases_the_loss_visiting_every_sample_once_per_epoch():
    A, b = _least_squares()
    calls = []
    p, batch_loss = _problem(A, b, calls)
    history = _run(batch_loss, p, len(b), "adam", epochs=40)
    assert len(history) == 40
    assert history[-1] < 0.1 * history[0]
    batches_per_epoch = -(-len(b) // 8)
    assert len(calls) == 40 * batches_per_epoch
    for epoch in range(40):
        rows = calls[epoch * batches_per_epoch:(epoch + 1) * batches_per_epoch]
        assert max(len(r) for r in rows) == 8
        np.testing.assert_array_equal(np.sort(torch.cat(rows).numpy()), np.arange(len(b)))


def test_adam_order_is_seeded():
    A, b = _least_squares()
    runs = {}
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        p, batch_loss = _problem(A, b)
        runs[name] = _run(batch_loss, p, len(b), "adam", epochs=3, seed=seed)
    assert runs["a"] == runs["b"]
    assert runs["a"] != runs["c"]


# --------------------------------------------------------------------- predict_in_chunks
@pytest.mark.parametrize("chunk_rows", [1, 7, 25, 1000])
def test_chunked_prediction_equals_one_shot(chunk_rows, torch_threads):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(25, 6)).astype(np.float32)
    weight = torch.from_numpy(rng.normal(size=(6, 3)).astype(np.float32)).requires_grad_()

    def fn(x):  # a parameter that requires a gradient: must run under no_grad
        return torch.tanh(x[:, :3]) * 2 + x[:, 3:] * weight[0]

    out = predict_in_chunks(fn, X, chunk_rows=chunk_rows)
    with torch.no_grad():
        whole = fn(torch.from_numpy(X)).numpy()
    assert out.shape == (25, 3) and out.dtype == np.float32
    np.testing.assert_array_equal(out, whole)  # row-wise: chunking changes no bit
    # a float32 product of 6 terms, each chunk's own blocking: gamma_6 |X| |weight|
    exact = X.astype(np.float64) @ weight.detach().numpy().astype(np.float64)
    bound = matmul_error_bound(X, weight.detach().numpy(), np.float32)
    for threads in (1, 2):
        with torch_threads(threads):
            linear = predict_in_chunks(lambda x: x @ weight, X, chunk_rows=chunk_rows)
        assert_within_bound(linear, exact, bound, f"chunked product, {threads} threads")
