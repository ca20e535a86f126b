"""The report of one preset's saved runs as Markdown: what ``bench/learning_efficiency.py`` writes to
``table.md`` and ``notebooks/ablations.ipynb`` displays, built in one place so the two cannot differ.

Sections: per-arm table (mean ± sample SD), paired differences (unadjusted), the density reward's effect,
the Holm-corrected family of every cell above, the density-by-method difference-of-differences (its own
family), the power table, and the code versions the runs came from (``provenance.py``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from lampo_pl.ablation.inference import family, family_markdown, interaction_differences, power_markdown
from lampo_pl.ablation.methods import method_preset
from lampo_pl.ablation.paired import paired_differences, paired_markdown
from lampo_pl.ablation.provenance import versions_report
from lampo_pl.ablation.run import RunResult
from lampo_pl.ablation.settings import AblationSettings
from lampo_pl.ablation.summary import grader_failures, summarise, to_markdown


def report_markdown(results: Sequence[RunResult], settings: AblationSettings) -> str:
    """Every table of the report of ``results`` (runs of ``settings``' arms and seeds), as one Markdown text."""
    versus = paired_differences(results, settings)
    density = paired_differences(results, settings, against="binary")
    interactions = interaction_differences(results, settings)
    table = to_markdown(summarise(results, settings), settings)
    table += f"\nPaired differences, arm minus reference, per seed: mean [95 % t interval] over seeds, unadjusted " \
             f"(bold: the interval excludes 0).\n\n{paired_markdown(versus, settings)}"
    if density:
        table += f"\nThe density reward's effect (same method with and without ROUGE-L), unadjusted:\n\n" \
                 f"{paired_markdown(density, settings)}"
    cells = family([*versus, *density])
    contrasts = [f"{r.label} − {r.reference_label}" for r in versus if (r.method, r.reference) in settings.contrasts]
    also = (f", the contrasts ({', '.join(contrasts)})" if contrasts else "") + (
        " and each density effect" if density else "")
    tested = sum(math.isfinite(c.p) for c in cells)  # Holm's m: a cell with fewer than 2 seeds has no p
    table += (f"\n### Corrected for {tested} comparisons (Holm)\n\nThe family: every cell above, i.e. each arm "
              f"minus its reference{also} × 3 outcomes "
              f"({len(versus) + len(density)} rows × 3 = {len(cells)} cells"
              + (f"; the {len(cells) - tested} with fewer than 2 seeds are left out" if tested < len(cells) else "")
              + f"). p: two-sided paired t-test; the Holm-adjusted interval of the cell ranked j by p has "
              f"level 1 − 0.05/(m − j + 1) (held at the first unrejected cell's level from there on), so it "
              f"excludes 0 (bold) exactly when Holm rejects at 0.05 (lampo_pl/ablation/inference.py).\n\n"
              f"{family_markdown(cells)}")
    if interactions:
        inter, base = family(interactions), method_preset(settings.baseline).label
        table += (f"\n### Does the density reward help one method more than another?\n\nPer seed, (arm + ROUGE-L − "
                  f"arm) − ({base} + ROUGE-L − {base}): the paired difference-of-"
                  f"differences; its own Holm family ({len(inter)} cells).\n\n{family_markdown(inter)}")
        cells += inter
    table += (f"\n### Power\n\nPer comparison: the sample SD (ddof = 1) of its per-seed differences, the mean "
              f"difference a two-sided paired t-test at 0.05 detects with 80 % power with the seeds run, and the "
              f"seeds needed to detect 0.02 (noncentral t; unadjusted).\n\n{power_markdown(cells)}")
    mixed, lines = versions_report([r.provenance for r in results])
    verdict = ("**Mixed or unknown code versions: these runs were not all made by the same code.**" if mixed
               else "Every run was made by the same code.")
    table += f"\n### Code versions\n\n{verdict}\n\n{lines}"
    if failed := grader_failures(results):
        table += (f"\nGrader failures (samples scored 0 because math-verify timed out or failed; re-run these runs): "
                  f"{failed}\n")
    return table
