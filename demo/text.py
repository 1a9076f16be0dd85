"""Everything the page says in words: the banner, the model card and the ELBO panel (Markdown)."""

from __future__ import annotations

from pathlib import Path

from vae_triton.images import pixel_spec
from vae_triton.likelihoods import get_likelihood, likelihood_for
from vae_triton.metrics import ACTIVE_UNIT_THRESHOLD

from .inference import ACTIVE_KL, Ladder, Rung

LATEX = [  # Gradio's KaTeX: display formulas between $$, inline ones between $
    {"left": "$$", "right": "$$", "display": True},
    {"left": "$", "right": "$", "display": False},
]
# The one formula each tab makes visible, by the tab's module name; the tabs follow the note's order.
TAB_FORMULAS = {
    "divergence": r"$$\mathrm{KL}[p\,\|\,q] = \mathbb{E}_{p}\Big[\log \frac{p(x)}{q(x)}\Big]"
    r" \;\ge\; 0, \quad = 0 \iff p = q$$",
    "fit": r"$$\arg\min_\theta \mathrm{KL}[p_{\text{data}}\,\|\,p_\theta] = \arg\max_\theta"
    r" \mathbb{E}_{p_{\text{data}}}[\log p_\theta(x)] \approx \arg\max_\theta \frac{1}{N}\sum_{n=1}^{N}"
    r" \log p_\theta(x_n)$$",
    "posterior": r"$$\log p(x) = \mathrm{ELBO}(x) + \mathrm{KL}[q(z\mid x)\,\|\,p(z\mid x)]$$",
    "reconstruct": r"$$\mathrm{ELBO}(x) = \mathbb{E}_{q_\phi(z\mid x)}[\log p_\theta(x\mid z)]"
    r" - \mathrm{KL}[q_\phi(z\mid x)\,\|\,p(z)]$$",
    "sample": r"$$z \sim \mathcal{N}(0, T^2 I), \qquad x \sim p_\theta(x\mid z)$$",
    "interpolate": r"$$z_t = (1-t)\,\mu_\phi(x_a) + t\,\mu_\phi(x_b), \quad t \in [0, 1]"
    r" \quad\text{(or along the great circle)}$$",
    "traverse": r"$$\mathcal{L}_\beta(x) = \mathbb{E}_{q_\phi(z\mid x)}[\log p_\theta(x\mid z)]"
    r" - \beta\,\mathrm{KL}[q_\phi(z\mid x)\,\|\,p(z)], \qquad z_d = v,\;"
    r" z_{j \ne d} = \mu_\phi(x)_j$$",
}


def intro(ladder: Ladder) -> str:
    """The page's opening lines: what the numbers are, the note's order of the tabs, and β (the slider
    only when the ladder has more than one trained β)."""
    one = len(ladder.betas) == 1
    beta = (
        f"This model was trained with β = {fmt_beta(ladder.betas[0])} (the KL weight of the training loss, "
        "recon NLL + β·KL); it is the only one served, so there is no β to choose."
        if one
        else "β weights the KL term of the training loss (recon NLL + β·KL): move the β slider to switch "
        "between models trained with different β — larger β buys a simpler, more disentangled code at the "
        "price of blurrier reconstructions. The model tabs follow it."
    )
    return (
        "# vae-triton · a β-VAE you can poke at\n"
        "Every number here is in **nats** (per image for the models). The tabs follow the lecture note: "
        "a divergence and why it is ≥ 0, maximum likelihood as minimum KL, the posterior and the ELBO, "
        f"then the VAE's encoder and decoder at work. {beta}\n"
    )


def data_name(rung: Rung) -> str:
    """What the model was trained on, for people: its metadata's `data_description` when it has one."""
    return str(rung.metadata.get("data_description") or pixel_spec(rung.dataset).title)


def fmt_beta(beta: float) -> str:
    return f"{beta:g}"


def nats(value: float) -> str:
    """A number of nats with two decimals and a true minus sign."""
    return f"{value:.2f}".replace("-", "−")


def banner(ladder: Ladder) -> str:
    """Markdown for the notice strip above the tabs ('' when there is nothing to say)."""
    if ladder.untrained:
        return (
            "## ⚠️ UNTRAINED MODEL — RANDOM WEIGHTS\n"
            "Nothing here reflects a trained VAE: reconstructions, samples and numbers are noise. "
            + " ".join(ladder.notices)
            + "\n\nTrain one (`python -m train --dataset dsprites --out runs/b1`) and start the app with "
            "`--checkpoint runs/b1`."
        )
    if ladder.notices:
        return "**Note:** " + " · ".join(ladder.notices)
    return ""


def _source(rung: Rung, ladder: Ladder) -> str:
    if ladder.origin == "hub":
        return f"{ladder.location} ({Path(rung.source).name})"
    if ladder.origin == "bundled":
        return f"bundled `demo/models/{Path(rung.source).parent.name}/{Path(rung.source).name}`"
    return (
        f"`{Path(rung.source).name}` in `{ladder.location}`" if ladder.origin == "checkpoint" else rung.source
    )


def model_card(rung: Rung, ladder: Ladder) -> str:
    """The selected model: data, β, training, and what it measured (config.json metadata, eval.json)."""
    cfg, meta, ev = rung.model.config, rung.metadata, rung.evaluation
    others = " · ".join(f"**{fmt_beta(b)}**" if b == rung.beta else fmt_beta(b) for b in ladder.betas)
    decoder = likelihood_for(cfg).label
    rows = [
        (
            "data",
            f"{data_name(rung)}, {cfg.image_channels}×{cfg.image_size}² images",
        ),
        ("model", f"latent {cfg.latent_dim}, {decoder} decoder, {rung.model.num_parameters():,} parameters"),
    ]
    steps = meta.get("steps")
    if steps:
        batch = f" × batch {meta['batch_size']}" if meta.get("batch_size") else ""
        unfinished = " (stopped early)" if meta.get("finished") is False else ""
        rows.append(("training", f"{steps:,} steps{batch}{unfinished}"))
    if "eval_recon" in meta and "eval_kl" in meta:
        n = meta.get("eval_images", "?")
        rows.append(
            (
                f"held out ({n} {meta.get('eval_split', '')} images)",
                f"recon NLL {nats(meta['eval_recon'])} · KL {nats(meta['eval_kl'])} · "
                f"ELBO {nats(-(meta['eval_recon'] + meta['eval_kl']))} nats",
            )
        )
    if "iw_log_likelihood" in ev:
        rows.append(
            (
                f"evaluated ({ev.get('images', '?')} {ev.get('split', '')} images)",
                f"log p(x) ≥ {nats(ev['iw_log_likelihood'])} (IW, K={ev.get('iw_samples', '?')}) · "
                f"ELBO {nats(ev.get('elbo', float('nan')))} · gap {nats(ev.get('gap', float('nan')))} nats",
            )
        )
    active = ev.get("active_units", meta.get("active_units"))
    if active is not None:
        threshold = f"Var_x E_q[z_d] > {ACTIVE_UNIT_THRESHOLD:g}"
        rows.append(("active units", f"{active} / {cfg.latent_dim} ({threshold})"))
    if "mig" in ev:
        rows.append(("MIG (disentanglement)", f"{ev['mig']:.3f} (0 = entangled, 1 = one latent per factor)"))
    rows.append(("from", _source(rung, ladder)))
    listing = "\n".join(f"- **{k}:** {v}" for k, v in rows)
    return f"#### Selected model: β = {fmt_beta(rung.beta)}   (ladder: {others})\n{listing}\n"


def elbo_panel(stats: dict) -> str:
    """The ELBO decomposition of one image, each line with what it means, and the identity it satisfies."""
    b = fmt_beta(stats["beta"])
    k = stats["iw_samples"]
    lines = [
        "| term | nats | what it says |",
        "|---|---:|---|",
        f"| reconstruction NLL  −E_q[log p(x\\|z)] | {nats(stats['recon_nll'])} | how many nats the decoder "
        f"still needs to describe x once it is told a code z ~ q(z\\|x) (mean over {k} draws) |",
        f"| KL[q(z\\|x) ‖ p(z)] | {nats(stats['kl'])} | how much information the code carries about x: "
        "the distance of the encoder's posterior from the prior N(0, I) |",
        f"| β·KL  (β = {b}) | {nats(stats['beta_kl'])} | the KL as this model's training loss weighs it "
        f"(loss = NLL + β·KL = {nats(stats['loss'])}) |",
        f"| **ELBO** = −NLL − KL | **{nats(stats['elbo'])}** | the evidence lower bound on log p(x) "
        "(always β = 1: the bound itself) |",
        f"| **log p(x)** ≈ IW bound, K = {k} | **{nats(stats['iw_log_likelihood'])}** | importance-weighted "
        "estimate of the log-likelihood: a tighter lower bound that reaches log p(x) as K → ∞ |",
        f"| **gap** = log p(x) − ELBO | **{nats(stats['gap'])}** | ≈ KL[q(z\\|x) ‖ p(z\\|x)]: how far the "
        "encoder's guess is from the true posterior — what amortised inference costs |",
    ]
    identity = (
        f"\n**log p(x) = ELBO + KL[q(z|x) ‖ p(z|x)]:**  {nats(stats['iw_log_likelihood'])} = "
        f"{nats(stats['elbo'])} + {nats(stats['gap'])}  (the IW bound stands in for log p(x), so the gap "
        "shown is a lower estimate of KL[q ‖ p(z|x)]; raise K to tighten it)"
    )
    note = ""
    likelihood = get_likelihood(stats["likelihood"])
    if likelihood.binary_only and not stats["binary_input"]:
        note = (
            f"\n\n*This image has grey pixels; the decoder is {likelihood.name.capitalize()} "
            "(a likelihood of black/white pixels), so the NLL is a cross-entropy rather than a normalised "
            "likelihood. On an image of pixels 0 and 1 it is exact.*"
        )
    return "\n".join(lines) + "\n" + identity + note


def traverse_intro(betas: list[float]) -> str:
    """The Traverse tab's opening line; it points at β only when the ladder has more than one."""
    beta = (
        "This is where β shows: compare the grid at the smallest and the largest β."
        if len(betas) > 1
        else f"One model (β = {fmt_beta(betas[0])}) is served; a ladder of runs trained with different "
        "`--beta` would show how β changes the grid."
    )
    return (
        f"Encode an image, then sweep one latent dimension at a time while holding the others at μ(x). {beta}"
    )


def traverse_caption(ranked: list[tuple[int, float]], values: list[float], dataset: str | None = None) -> str:
    """`dataset`: the model's metadata name; the factors are named only where the data is known."""
    factors = " (in dSprites: position, scale, rotation, shape)" if dataset == "dsprites" else " of variation"
    active = sum(kl >= ACTIVE_KL for _, kl in ranked)
    return (
        f"Rows: latent dimensions of this image ranked by their KL (most informative first); {active} of the "
        f"{len(ranked)} shown carry ≥ {ACTIVE_KL} nats. Columns: that dimension set to "
        f"{values[0]:+.1f} … {values[-1]:+.1f} (prior standard deviations), every other dimension "
        "kept at μ(x). "
        f"With larger β, fewer dimensions stay active and each tends to control one factor{factors}."
    )


# ---- the Posterior tab ------------------------------------------------------------------------------
JENSEN = (
    "Each importance weight w = p(x, z) / q(z|x), z ~ q(z|x), has mean E[w] = p(x). The logarithm is "
    "concave, so by Jensen's inequality (the note's Proposition 1, the same step that makes KL ≥ 0) "
    "E[log (1/K) Σ_k w_k] ≤ log E[(1/K) Σ_k w_k] = log p(x): K = 1 is the ELBO, and averaging more weights "
    "inside the log shrinks Jensen's gap towards zero."
)


def posterior_intro(rung: Rung, ladder: Ladder) -> str:
    cfg = rung.model.config
    text = (
        f"With a 2-D latent space the true posterior p(z|x) = p(x|z) p(z) / p(x) can be computed on a grid, "
        f"and so can log p(x) itself. The model here: {data_name(rung)}, "
        f"{cfg.image_channels}×{cfg.image_size}² images, {cfg.likelihood} decoder, latent 2 "
        f"(β = {fmt_beta(rung.beta)}). Pick an example, upload an image or draw one; click the latent map to "
        "decode any z. The gap KL[q ‖ p(z|x)] splits in two (Cremer, Li & Duvenaud 2018): the "
        "**approximation gap**, log p(x) − ELBO(q*), what the best diagonal Gaussian q* for this one image "
        "still misses, the cost of the Gaussian family; and the **amortisation gap**, ELBO(q*) − ELBO(q), "
        "the cost of one encoder guessing q for every image."
    )
    if len(ladder.objectives) > 1:
        text += (
            " **Switch the model** between the one trained on the ELBO and the one trained on the tighter "
            "importance-weighted bound (IWAE: same data, network and budget). Trained on the IWAE bound, "
            "q(z|x) broadens relative to p(z|x) (it is a proposal for K samples, no longer the ELBO's "
            "tight guess), log p(x) rises, and KL[q ‖ p(z|x)] changes with it: the ELBO is no longer what "
            "training maximises. Compare the dashed blue contours, the table and the chart."
        )
    return text


def posterior_numbers(result: dict, rung: Rung) -> dict:
    """The tab's numbers as JSON (nats): the identity's terms, its residual, both gaps, q and q*, the IW
    bounds with their single draws and how many of them lie above log p(x)."""
    z = result["z"]
    draws = result.get("iw_draws") or [[] for _ in result["iw_ks"]]
    return {
        "beta": rung.beta,
        "model": Path(rung.source).name,
        "log_px": result["log_px"],
        "elbo": result["elbo"],
        "kl_to_posterior": result["kl_to_posterior"],
        "identity_residual": result["log_px"] - result["elbo"] - result["kl_to_posterior"],
        "best_elbo": result["best_elbo"],
        "approximation_gap": result["approximation_gap"],
        "amortisation_gap": result["amortisation_gap"],
        "q_mass_on_grid": result["q_mass"],
        "q_mean": [float(v) for v in result["mu"]],
        "q_std": [float(v) for v in result["std"]],
        "q_star_mean": [float(v) for v in result["mu_star"]],
        "q_star_std": [float(v) for v in result["std_star"]],
        "grid": {
            "points": int(z.shape[0]),
            "z1": [float(z[0, 0, 0]), float(z[-1, 0, 0])],
            "z2": [float(z[0, 0, 1]), float(z[0, -1, 1])],
        },
        "iw_bounds": [
            {
                "K": k,
                "bound": m,
                "sem": None if s != s else s,  # NaN (one group) → null in JSON
                "draws": list(d),
                "draws_above_log_px": sum(v > result["log_px"] for v in d),
            }
            for k, m, s, d in zip(result["iw_ks"], result["iw_means"], result["iw_sems"], draws, strict=True)
        ],
    }


def posterior_identity(numbers: dict) -> str:
    n = numbers
    return (
        "| term | nats | how it is computed |\n|---|---:|---|\n"
        f"| **log p(x)** | **{nats(n['log_px'])}** | log ∫ p(x\\|z) p(z) dz by quadrature on a "
        f"{n['grid']['points']}² grid that zooms onto the posterior's mass |\n"
        f"| ELBO | {nats(n['elbo'])} | E_q[log p(x\\|z)] on the same grid − KL[q(z\\|x) ‖ p(z)] "
        "in closed form |\n"
        f"| KL[q(z\\|x) ‖ p(z\\|x)] | {nats(n['kl_to_posterior'])} | ∫ q (log q − log p(z\\|x)) dz on the "
        "grid: how far the encoder's guess is from the true posterior |\n"
        f"| ↳ approximation gap | {nats(n['approximation_gap'])} | log p(x) − ELBO(q*), q* the best "
        "diagonal Gaussian for this image (ELBO maximised over its μ, σ on the grid): the Gaussian family's "
        "cost |\n"
        f"| ↳ amortisation gap | {nats(n['amortisation_gap'])} | ELBO(q*) − ELBO(q): the cost of one "
        "encoder for all images |\n\n"
        f"**log p(x) = ELBO + KL[q(z|x) ‖ p(z|x)]:**  {nats(n['log_px'])} = {nats(n['elbo'])} + "
        f"{nats(n['kl_to_posterior'])}  (residual {n['identity_residual']:.1e} nats); "
        f"KL = {nats(n['approximation_gap'])} + {nats(n['amortisation_gap'])}"
    )


def iw_caption(numbers: dict) -> str:
    rows = " · ".join(
        f"K = {b['K']:,}: {nats(b['bound'])}" + (f" ± {b['sem']:.2f}" if b["sem"] is not None else "")
        for b in numbers["iw_bounds"]
    )
    text = (
        f"{rows} (log p(x) = {nats(numbers['log_px'])}; mean of the draws ± one standard error)\n\n{JENSEN}"
    )
    largest = numbers["iw_bounds"][-1]
    spread = largest.get("draws") or []
    if len(spread) > 1:
        text += (
            f"\n\nThe dots are single draws: {len(spread)} independent K = {largest['K']:,} bounds range "
            f"from {nats(min(spread))} to {nats(max(spread))}."
        )
    above = [
        (b["K"], b["draws_above_log_px"], len(b["draws"])) for b in numbers["iw_bounds"] if b.get("draws")
    ]
    above = [(k, a, n) for k, a, n in above if a]
    if above:
        which = ", ".join(f"{a} of {n} at K = {k:,}" for k, a, n in above)
        text += (
            f" **{which} lie above log p(x)** (red). That does not break the bound: it holds in expectation, "
            "E[log (1/K) Σ w] ≤ log p(x), not draw by draw. When q(z|x) is narrower than p(z|x), the rare z "
            "in p's tails get huge weights p(x, z)/q(z|x): most draws miss them and fall short, and a draw "
            "that catches one jumps above log p(x); the average stays below."
        )
    else:
        text += " None lies above log p(x) here; a single draw can (the bound holds in expectation)."
    return text


def decoded_caption(z1: float, z2: float) -> str:
    return f"z = ({z1:+.2f}, {z2:+.2f}), decoded to its mean image".replace("-", "−")


# ---- the Divergence and Fit tabs --------------------------------------------------------------------
PROPOSITIONS = r"""**Why KL ≥ 0, in three steps.**

- **Proposition 1 (Jensen):** for a convex $f$, $\mathbb{E}[f(X)] \ge f(\mathbb{E}[X])$: the mean of points
on a convex curve lies on or above it (the red dot above the black square).
- **Proposition 2 (LOTUS):** $\mathbb{E}_p[g(X)] = \int g(x)\,p(x)\,dx$ without the distribution of $g(X)$, so
$\mathbb{E}_p[q/p] = \int q(x)\,dx = 1$: the points' mean sits at $t = 1$.
- **Proposition 3 (generalised Jensen):** $\mathbb{E}_p[f(g(X))] \ge f(\mathbb{E}_p[g(X)])$ for any $g$; with
$f = -\log$ and $g = q/p$ it reads $\mathrm{KL}[p\,\|\,q] \ge -\log 1 = 0$, with equality only when $q/p$ is
constant, i.e. $p = q$ — then every point collapses onto $t = 1$."""

POSTERIOR_TIE = (
    "The VAE's encoder minimises the reverse direction, KL[q(z|x) ‖ p(z|x)] (the gap between log p(x) and "
    "the ELBO): like the blue dashed fit here, q(z|x) is mode-seeking and sits inside the true posterior "
    "on the Posterior tab rather than covering it."
)


def _kl(value: float) -> str:
    return f"{value:.3f}".replace("-", "−")


def divergence_table(n: dict) -> str:
    """The Divergence tab's numbers (nats, three decimals: the quadrature is exact to far better)."""
    z = (n["mc_kl_pq"] - n["kl_pq"]) / n["mc_sem"] if n["mc_sem"] > 0 else 0.0
    rows = [
        "| quantity | nats | how |",
        "|---|---:|---|",
        f"| **KL[p ‖ q]** | **{_kl(n['kl_pq'])}** | ∫ p log(p/q) dx by Simpson's rule on a fine grid |",
        f"| KL[q ‖ p] | {_kl(n['kl_qp'])} | the other direction: KL is not symmetric |",
        f"| Monte Carlo KL[p ‖ q] | {_kl(n['mc_kl_pq'])} ± {n['mc_sem']:.3f} | mean of log p(xᵢ)/q(xᵢ) over "
        f"N = {n['mc_samples']:,} samples xᵢ ~ p, ± one standard error ({z:+.1f} s.e. from the quadrature) |",
        f"| E_p[q/p] ≈ (1/N) Σ q(xᵢ)/p(xᵢ) | {n['mean_g']:.3f} | exactly 1 (Proposition 2): where "
        "Jensen's picture puts the mean |",
    ]
    if n["closed_form_kl_pq"] is not None:
        rows.append(
            f"| closed form (two Gaussians) | {_kl(n['closed_form_kl_pq'])} / "
            f"{_kl(n['closed_form_kl_qp'])} | "
            "log(s_q/s_p) + (s_p² + (m_p − m_q)²)/(2 s_q²) − ½, both directions |"
        )
    if n["p_equals_q"]:
        rows.append("\n**p = q:** both KLs are 0 and every sampled point of Jensen's picture is t = 1.")
    return "\n".join(rows)


def fit_table(n: dict) -> str:
    """The Fit tab's numbers: both fits with both KLs, and the constant E_p[log p] (nats)."""
    mle, moments, reverse = n["mle"], n["moments"], n["reverse"]

    def row(name: str, f: dict) -> str:
        return (
            f"| {name} | {f['mean']:.3f} | {f['std']:.3f} | {_kl(f['forward_kl'])} | {_kl(f['reverse_kl'])} |"
        ).replace("-", "−")

    return "\n".join(
        [
            "| Gaussian q_θ = N(μ, σ²) | μ | σ | KL[p ‖ q_θ] | KL[q_θ ‖ p] |",
            "|---|---:|---:|---:|---:|",
            row(f"**maximum likelihood** on N = {n['samples']:,} samples (green)", mle),
            row("argmin KL[p ‖ q_θ] (N → ∞: p's mean and std)", moments),
            row("**argmin KL[q_θ ‖ p]** (blue, dashed)", reverse),
            "",
            f"**E_p[log p] = {_kl(n['neg_entropy'])} nats**, a constant: it does not depend on θ. "
            f"KL[p ‖ q_θ] = E_p[log p] − E_p[log q_θ], so maximising E_p[log q_θ] minimises the KL; the "
            f"average log-likelihood (1/N) Σ log q_θ(xₙ) = {_kl(n['avg_loglik'])} estimates "
            f"E_p[log q_θ] = {_kl(n['expected_loglik'])} (quadrature), and "
            f"{_kl(n['neg_entropy'])} − ({_kl(n['expected_loglik'])}) = {_kl(mle['forward_kl'])}. "
            "Maximum likelihood covers both modes (forward KL punishes q ≈ 0 where p > 0); the reverse fit "
            "picks one (reverse KL punishes q > 0 where p ≈ 0).",
            "",
            POSTERIOR_TIE,
        ]
    )


def curves_caption(found: list[str], missing: list[str]) -> str:
    """Under the training curves: what they are, and which served models have none (and why)."""
    said = (
        "Part 3's objective on the served models: the held-out average ELBO, a lower bound on "
        "(1/N) Σ log p_θ(xₙ), read from each model's metrics.jsonl (`--eval-every`), climbing as training "
        "maximises the likelihood."
    )
    if missing:
        said += " No held-out lines in: " + ", ".join(missing) + "."
    return said
