"""The study's claims, each with the study's value, microcae's measured value and a verdict.

Each function takes measurements made by :mod:`microcae.evaluation.reproduction.run` and returns a
:class:`Claim`. The verdict rules are fixed here, before any number is seen, and are printed
in the report: "holds", "partly" or "does not hold".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

from microcae.evaluation.attack import NO_LEAK_SCENARIOS, AttackResult
from microcae.evaluation.reproduction.exactness import ExactnessCheck
from microcae.evaluation.reproduction.results import MethodStats, StorageRow

STUDY_PARAMETERS = 50_353
STUDY_LATENT = (8, 16, 16)
STUDY_RATIO = 32
STUDY_MSE = 0.0035
EXACT_TOLERANCE = 1e-9
"""Largest relative difference (float64) still called exact: far below any float32 effect."""
AUROC_CLEAR = 0.6
"""Mean AUROC above which relevance clearly concentrates on a region (0.5 = no preference)."""
AGREEING_SHARE = 0.75
"""Share of tiles that must individually favour the region for the claim to hold."""
KEY_MARGIN_DB = 3.0
"""An adversary within this many dB of the owner's PSNR has broken "the decoder is the key"."""
BASELINES = ("gbp", "lrp-w2", "lrp-zbeta")

Verdict = str


@dataclass(frozen=True)
class Claim:
    """One row of the claims table.

    Attributes
    ----------
    claim
        The study's statement, short.
    study
        The study's value, as text.
    measured
        microcae's value from this run, as text.
    verdict
        ``"holds"``, ``"partly"`` or ``"does not hold"``.
    rule
        How the verdict was decided.
    """

    claim: str
    study: str
    measured: str
    verdict: Verdict
    rule: str

    def as_dict(self) -> dict[str, str]:
        """JSON-ready copy."""
        return asdict(self)


def _grade(passed: int, total: int) -> Verdict:
    if passed == total:
        return "holds"
    return "partly" if passed else "does not hold"


def parameters_claim(count: int) -> Claim:
    """Judge "the CAE has 50,353 trainable parameters"."""
    return Claim("CAE size", f"{STUDY_PARAMETERS:,} parameters", f"{count:,} parameters",
                 _grade(count == STUDY_PARAMETERS, 1), "equal count")


def latent_claim(shape: Sequence[int], tile_values: int) -> Claim:
    """Judge "a 256×256 tile becomes a 16×16×8 latent: ratio 32 in values"."""
    channels, height, width = shape
    ratio = tile_values / (channels * height * width)
    return Claim("latent 16×16×8, compression ratio 32 (values)",
                 f"16×16×8, ratio {STUDY_RATIO}",
                 f"{height}×{width}×{channels}, ratio {ratio:g}",
                 _grade(int(tuple(shape) == STUDY_LATENT and ratio == STUDY_RATIO), 1),
                 "same latent shape and ratio of value counts")


def bytes_claim(storage: Sequence[StorageRow]) -> Claim:
    """Judge "ratio 32" in bytes: real latent files (header included) against 8-bit tiles."""
    meets = [row for row in storage if row.ratio >= STUDY_RATIO]
    measured = "; ".join(f"{row.label} {row.ratio:.1f}" for row in storage)
    return Claim("compression ratio 32 (bytes of real files vs the 8-bit tile)",
                 f"{STUDY_RATIO} (stated in values only)", measured,
                 _grade(len(meets), len(storage)),
                 f"holds if every storage reaches {STUDY_RATIO}, partly if some do")


def mse_claim(train_mse: float, test_mse: float) -> Claim:
    """Judge "reconstruction MSE below 0.0035 on train and test tiles"."""
    return Claim("reconstruction MSE < 0.0035 on train and test", f"< {STUDY_MSE}",
                 f"train {train_mse:.4f}, test {test_mse:.4f}",
                 _grade(int(train_mse < STUDY_MSE) + int(test_mse < STUDY_MSE), 2),
                 "holds if both are below, partly if one is")


def exactness_claim(check: ExactnessCheck) -> Claim:
    """Judge "complex-step relevance equals exact derivatives" (to machine precision)."""
    literal, fast = check.max_rel_diff_literal_vs_autograd, check.max_rel_diff_vjp_vs_autograd
    return Claim("complex-step relevance = exact derivatives", "exact to machine precision",
                 f"max rel. diff. vs autograd: literal {literal:.1e}, fast engine {fast:.1e} "
                 f"(float64, {check.tiles}×{check.pixels_per_tile} px)",
                 _grade(int(literal <= EXACT_TOLERANCE) + int(fast <= EXACT_TOLERANCE), 2),
                 f"holds if both differences are ≤ {EXACT_TOLERANCE:g}")


def microstructure_claim(stats: MethodStats, scope: str) -> Claim:
    """Judge "relevance concentrates on the dark (secondary) phase and on boundaries".

    ``stats``: the complex-step row (mean AUROCs and shares of tiles with AUROC > 0.5).
    """
    tests = [stats.dark_auroc > AUROC_CLEAR and stats.dark_share >= AGREEING_SHARE,
             stats.boundary_auroc > AUROC_CLEAR and stats.boundary_share >= AGREEING_SHARE]
    return Claim("relevance on dark phase and boundaries, little on the grey matrix",
                 "seen by eye (Fig. 11)",
                 f"{scope}: dark-phase AUROC {stats.dark_auroc:.2f} "
                 f"({stats.dark_share:.0%} of tiles > 0.5), boundary AUROC "
                 f"{stats.boundary_auroc:.2f} ({stats.boundary_share:.0%})",
                 _grade(sum(tests), 2),
                 f"per region: mean AUROC > {AUROC_CLEAR} and ≥ {AGREEING_SHARE:.0%} of tiles "
                 "> 0.5; holds if both regions pass, partly if one does")


CONSISTENCY_MEASURES = {
    "noise_rho": "stability under half a grey level of noise (Spearman ρ)",
    "dark_share": "share of tiles whose map favours the dark phase",
    "sanity_pass": "share of tiles passing the model-randomisation check",
}


def consistency_claim(per_method: Mapping[str, MethodStats]) -> Claim:
    """Judge "complex-step maps are more consistent than GBP and LRP".

    ``per_method`` maps method name -> its stats; of the measures of
    :data:`CONSISTENCY_MEASURES`, those NaN for the complex step (not run) are left out.
    """
    won, asked, parts = 0, 0, []
    ours = per_method["complex-step"]
    for key, label in CONSISTENCY_MEASURES.items():
        value = getattr(ours, key)
        if value != value:  # NaN: not measured in this run
            continue
        others = {m: getattr(per_method[m], key) for m in BASELINES if m in per_method}
        asked += 1
        best_other = max(others.values())
        won += value >= best_other
        parts.append(f"{label}: {value:.2f} vs best baseline {best_other:.2f}")
    return Claim("complex-step more consistent than GBP and LRP", "seen by eye (Fig. 11)",
                 "; ".join(parts), _grade(won, asked),
                 "holds if complex-step is at least as good as every baseline on every "
                 "measure, partly if on some")


def key_claim(attack: AttackResult) -> Claim:
    """Judge "the decoder is a key: without it, latents cannot be turned into images"."""
    psnr = attack.psnr_db()
    owner = psnr.pop("owner")
    adversaries = psnr
    blind = max((adversaries[k], k) for k in NO_LEAK_SCENARIOS if k in adversaries)
    strongest = max((v, k) for k, v in adversaries.items())
    blind_safe = blind[0] < owner - KEY_MARGIN_DB
    all_safe = strongest[0] < owner - KEY_MARGIN_DB
    verdict = "holds" if all_safe else ("partly" if blind_safe else "does not hold")
    return Claim("decoder weights act as a key (secure sharing)", "stated, not measured",
                 f"owner {owner:.1f} dB; best adversary without leaks {blind[0]:.1f} dB "
                 f"({blind[1]}); strongest adversary {strongest[0]:.1f} dB ({strongest[1]})",
                 verdict,
                 f"holds if every adversary stays > {KEY_MARGIN_DB:g} dB below the owner, partly "
                 "if only those without leaked pairs or encoder do")
