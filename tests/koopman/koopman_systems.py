"""Shared generators for the Koopman estimator tests."""

from __future__ import annotations

import numpy as np


def modal_system(seed: int, q: int, n: int, constant: bool, noise: float = 0.0):
    """x_t = c + sum_k a_k lambda_k^t v_k with real and complex-conjugate lambda inside the unit circle.

    Returns (X of shape (n, q), a function t -> exact x_t, the limit c).
    """
    rng = np.random.default_rng(seed)
    lam_real = rng.uniform(0.5, 0.95, size=2) * rng.choice([-1.0, 1.0], size=2, p=[0.2, 0.8])
    lam_cplx = rng.uniform(0.6, 0.95) * np.exp(1j * rng.uniform(0.1, 1.0))
    c = rng.normal(size=q) if constant else np.zeros(q)
    vr = rng.normal(size=(2, q))
    vc = rng.normal(size=q) + 1j * rng.normal(size=q)

    def x(t):
        t = np.asarray(t, dtype=float)[..., None]
        out = c + (lam_real[0] ** t) * vr[0] + 0.7 * (lam_real[1] ** t) * vr[1]
        return out + 2.0 * np.real((lam_cplx**t) * vc)

    clean = x(np.arange(n))
    scale = np.sqrt(np.mean(clean**2))
    noisy = clean + noise * scale * rng.normal(size=clean.shape)
    return noisy, x, c


def ridge_hypergradient(seed: int, n: int, p: int = 3, lam: float = 0.1, lr: float = 0.1):
    """Forward-mode hypergradient of log(lam) for gradient descent on ridge regression.

    theta_{t+1} = theta_t - lr (A theta_t - b + lam theta_t), z = d theta / d log(lam),
    z_{t+1} = (I - lr (A + lam I)) z_t - lr lam theta_t, h_t = grad_val(theta_t) . z_t.
    Returns (h of shape (n + extra,) for t = 1.., the exact limit h*, function steps -> h_{n+steps}).
    """
    rng = np.random.default_rng(seed)
    qmat, _ = np.linalg.qr(rng.normal(size=(p, p)))
    a_tr = qmat @ np.diag(np.linspace(0.2, 0.8, p)) @ qmat.T
    b_tr = rng.normal(size=p)
    a_val = a_tr + 0.1 * np.diag(rng.uniform(size=p))
    b_val = b_tr + 0.3 * rng.normal(size=p)
    eye = np.eye(p)
    theta, z, hs = np.zeros(p), np.zeros(p), []
    for _ in range(n + 500):
        theta, z = (
            theta - lr * (a_tr @ theta - b_tr + lam * theta),
            (eye - lr * (a_tr + lam * eye)) @ z - lr * lam * theta,
        )
        hs.append((a_val @ theta - b_val) @ z)
    hs = np.array(hs)
    theta_star = np.linalg.solve(a_tr + lam * eye, b_tr)
    z_star = -lam * np.linalg.solve(a_tr + lam * eye, theta_star)
    return hs[:n], float((a_val @ theta_star - b_val) @ z_star), lambda s: hs[n - 1 + s]
