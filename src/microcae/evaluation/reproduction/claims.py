"""The study's claims, each with the study's value, microcae's measured value and a verdict.

Each function takes measurements made by :mod:`microcae.evaluation.reproduction.run` and returns a
:class:`Claim`. The verdict rules are fixed here, before any number is seen, and are printed
in the report: "holds", "partly" or "does not hold". Intervals are 95 % cluster-bootstrap
intervals over micrographs (:mod:`microcae.metrics.bootstrap`); where a rule names an interval,
the whole interval must pass, not only the mean, and an interval needs at least two micrographs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

from microcae.evaluation.attack import NO_LEAK_SCENARIOS, AttackResult
from microcae.evaluation.fidelity import BETTER, CAE_NAME, MEASURES, FidelityResult
from microcae.evaluation.reproduction.exactness import ExactnessCheck
from microcae.evaluation.reproduction.results import (
    MethodStats,
    MseEstimate,
    SaliencyEstimates,
    StorageRow,
)
from microcae.saliency.registry import names

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
CHANCE = 0.5
"""AUROC of a map that does not prefer the region; the interval must exclude it."""
FIDELITY_REFERENCE = "jpeg2000"
"""The codec the CAE must not lose to at the same bytes for "without loss of information"."""
BASELINES = names("baseline", study=True)

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
    meets = [row for row in storage if row.ratio.spread and row.ratio.low >= STUDY_RATIO]
    measured = "; ".join(f"{row.label} {row.ratio.text('.1f')}" for row in storage)
    return Claim("compression ratio 32 (bytes of real files vs the 8-bit tile)",
                 f"{STUDY_RATIO} (stated in values only)", measured,
                 _grade(len(meets), len(storage)),
                 f"holds if every storage's ratio interval lies at or above {STUDY_RATIO}, "
                 "partly if some do")


def mse_claim(judged: MseEstimate, others: Sequence[MseEstimate] = ()) -> Claim:
    """Judge "reconstruction MSE below 0.0035 on train and test tiles".

    ``judged`` is the model trained the study's way (its kind of micrographs, random tile
    split); ``others`` are shown beside it.
    """
    below = int(judged.train.below(STUDY_MSE)) + int(judged.test.below(STUDY_MSE))
    parts = [f"{judged.label}: train {judged.train.text('.4f')}, test "
             f"{judged.test.text('.4f')}"]
    parts += [f"{o.label}: test {o.test.text('.4f')}" for o in others]
    return Claim("reconstruction MSE < 0.0035 on train and test", f"< {STUDY_MSE}",
                 "; ".join(parts), _grade(below, 2),
                 f"judged on {judged.label}: holds if the intervals of both train and test MSE "
                 "lie below 0.0035, partly if one does")


def exactness_claim(check: ExactnessCheck) -> Claim:
    """Judge "complex-step relevance equals exact derivatives" (to machine precision)."""
    literal, fast = check.max_rel_diff_literal_vs_autograd, check.max_rel_diff_vjp_vs_autograd
    return Claim("complex-step relevance = exact derivatives", "exact to machine precision",
                 f"max rel. diff. vs autograd: literal {literal:.1e}, fast engine {fast:.1e} "
                 f"(float64, {check.tiles}×{check.pixels_per_tile} px)",
                 _grade(int(literal <= EXACT_TOLERANCE) + int(fast <= EXACT_TOLERANCE), 2),
                 f"holds if both differences are ≤ {EXACT_TOLERANCE:g}")


def microstructure_claim(stats: SaliencyEstimates, scope: str) -> Claim:
    """Judge "relevance concentrates on the dark (secondary) phase and on boundaries".

    ``stats``: the complex step on every tile of ``scope`` (mean AUROCs with intervals, shares of
    tiles with AUROC > 0.5).
    """
    tests = []
    for key, share in (("dark_auroc", stats.dark_share),
                       ("boundary_auroc", stats.boundary_share)):
        auroc = stats.measures[key]
        tests.append(auroc.value > AUROC_CLEAR and share.value >= AGREEING_SHARE
                     and auroc.above(CHANCE))
    dark, boundary = stats.measures["dark_auroc"], stats.measures["boundary_auroc"]
    return Claim("relevance on dark phase and boundaries, little on the grey matrix",
                 "seen by eye (Fig. 11)",
                 f"{scope} ({stats.tiles} tiles, {stats.images} micrographs): dark-phase AUROC "
                 f"{dark.text()} ({stats.dark_share.value:.0%} of tiles > 0.5), boundary AUROC "
                 f"{boundary.text()} ({stats.boundary_share.value:.0%})",
                 _grade(sum(tests), 2),
                 f"per region: mean AUROC > {AUROC_CLEAR}, ≥ {AGREEING_SHARE:.0%} of tiles > 0.5 "
                 f"and the interval above {CHANCE}; holds if both regions pass, partly if one "
                 "does")


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


def fidelity_claim(result: FidelityResult, scope: str) -> Claim:
    """Judge "ratio 32 without loss of important information" against JPEG 2000 at equal bytes.

    Per fidelity measure, the CAE passes unless it is measurably worse than JPEG 2000 at the
    same bytes: the interval of its per-tile advantage must reach 0 or above.
    """
    passed, parts = 0, []
    for key in MEASURES:
        ours = result.estimate(CAE_NAME, key)
        theirs = result.estimate(FIDELITY_REFERENCE, key)
        lead = result.advantage(key, FIDELITY_REFERENCE)
        passed += not (lead.below(0.0) if lead.spread else lead.value < 0.0)
        parts.append(f"{key} ({'lower' if BETTER[key] == 'lower' else 'higher'} is better) "
                     f"{ours.text('.3f')} vs {theirs.text('.3f')}")
    return Claim("ratio 32 without loss of important information (phases, boundaries, "
                 "spatial statistics)", "stated (judged by MSE only)",
                 f"{scope}, study CAE (uint8 + zstd) vs JPEG 2000 at the same bytes: "
                 + "; ".join(parts), _grade(passed, len(MEASURES)),
                 "per measure (phase-fraction error, two-point-correlation error, boundary "
                 "F-score): the CAE passes unless the interval of its per-tile advantage over "
                 "JPEG 2000 at the same bytes lies below 0 (from one micrograph: unless the mean "
                 "does); holds if all pass, partly if some do")


def _gain_over_last_doubling(attack: AttackResult, name: str) -> float:
    """PSNR gained by ``name`` between the checkpoint at half its steps or less and the end."""
    curve = attack.curves.get(name, [])
    earlier = [score.psnr_db for step, score in curve if 2 * step <= attack.steps]
    return curve[-1][1].psnr_db - earlier[-1] if curve and earlier else float("nan")


def key_claim(attack: AttackResult, budget: str = "", check: AttackResult | None = None
              ) -> Claim:
    """Judge "the decoder is a key: without it, latents cannot be turned into images".

    ``attack`` is judged (``budget`` says whose training budget it had); ``check`` is a
    shorter run of this report shown beside it.
    """
    psnr = attack.psnr_db()
    owner = psnr.pop("owner")
    adversaries = psnr
    blind = max((adversaries[k], k) for k in NO_LEAK_SCENARIOS if k in adversaries)
    strongest = max((v, k) for k, v in adversaries.items())
    blind_safe = blind[0] < owner - KEY_MARGIN_DB
    all_safe = strongest[0] < owner - KEY_MARGIN_DB
    verdict = "holds" if all_safe else ("partly" if blind_safe else "does not hold")
    gain = _gain_over_last_doubling(attack, strongest[1])
    measured = (f"{budget or f'{attack.steps} steps per stage'}: owner {owner:.1f} dB; best "
                f"adversary without leaks {blind[0]:.1f} dB ({blind[1]}); strongest adversary "
                f"{strongest[0]:.1f} dB ({strongest[1]}"
                + (f", +{gain:.1f} dB over its last doubling of steps" if gain == gain else "")
                + ")")
    if check is not None:
        best = max((v, k) for k, v in check.psnr_db().items() if k != "owner")
        measured += (f"; this run's {check.steps}-step check: strongest {best[0]:.1f} dB "
                     f"({best[1]})")
    return Claim("decoder weights act as a key (secure sharing)", "stated, not measured",
                 measured, verdict,
                 f"holds if every adversary stays > {KEY_MARGIN_DB:g} dB below the owner, partly "
                 "if only those without leaked pairs or encoder do")
