"""The tables a result is read by, in Markdown: B / B' / G for every repair, and the stopping
rules' choices when the repair selected from a pruning curve."""

from __future__ import annotations

from ..errors import one_line
from ..measure.measurement import Measurement

ORACLE_NOTE = (
    "ORACLE: this repair used poisoned validation data, which the lab's rules forbid for "
    "design; it shows what knowing the trigger buys, not a deployable defense."
)
FORCED_NOTE = (
    "FORCED: B was not clearly better than chance on the clean validation data ({accuracy:.2f} % of "
    "{images} images, chance {chance:.2f} %); the numbers below are of a model that may be broken or "
    "fed data it was not made for (--force)."
)
SUMMARY_NOTE = (
    "Accuracies and ASR in %. *flagged poisoned* is G's detection rate on poisoned test inputs; "
    "*flagged clean* is its false-alarm rate on clean test inputs. G answers B's label where B "
    'and B\' agree, and the extra class ("poisoned") where they do not.'
)


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def cell_text(text: object) -> str:
    """`text` as one Markdown table cell: one line (control characters escaped), `|` escaped."""
    return one_line(str(text)).replace("|", "\\|")


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def summary_table(result: Measurement) -> str:
    """B, then every B' with its G, on the validation and test sets given."""
    lines = [
        _row(
            [
                "model",
                "B'",
                "channels pruned",
                "valid acc",
                "valid ASR",
                "test acc",
                "test ASR",
                "flagged poisoned",
                "flagged clean",
            ]
        ),
        "|---" * 9 + "|",
    ]
    base = result.baseline
    lines.append(
        _row(
            [
                "B (backdoored)",
                "–",
                "0",
                *(_pct(base[k]) for k in ("valid_accuracy", "valid_asr", "test_accuracy", "test_asr")),
                "–",
                "–",
            ]
        )
    )
    by_name = {m.name: m for m in result.models}
    names = [m.name for m in result.models]
    saved = result.details.get("saved_rules")
    if result.curve is not None and saved is not None:  # in selection order, with budgets never reached
        names = [c.name for c in result.thresholds if c.rule in saved]
    for name in names:
        m = by_name.get(name)
        if m is None:
            lines.append(_row(["B'", name, "never reached", *["–"] * 6]))
            continue
        count = str(sum(len(c) for c in m.repaired.pruned.values()))
        b, v, t = m.scores, m.goodnet_valid, m.goodnet_test
        lines.append(
            _row(
                [
                    "B'",
                    name,
                    count,
                    *(_pct(b[k]) for k in ("valid_accuracy", "valid_asr", "test_accuracy", "test_asr")),
                    "–",
                    "–",
                ]
            )
        )
        lines.append(
            _row(
                [
                    "G",
                    name,
                    count,
                    _pct(v["valid_accuracy"]),
                    _pct(v["valid_asr"]),
                    _pct(t["test_accuracy"]),
                    _pct(t["test_asr"]),
                    _pct(t["flagged_poisoned"]),
                    _pct(t["flagged_clean"]),
                ]
            )
        )
    return "\n".join(lines)


VERDICT_NOTE = (
    "Measured on the test sets (the validation sets only when no test set was given). Intervals are "
    "95 %: Wilson's for an ASR or an accuracy, Newcombe's paired interval for the change in clean "
    "accuracy, which B and B' are measured on the same images for. The backdoor is *removed* when "
    "B''s ASR is at most 2 %, *reduced* when its ASR fell by more than the images' noise explains. "
    "A cost is *within budget* only when the whole interval of the drop is; *not shown* means the "
    "images are too few to tell."
)


DETECTION_NOTE = (
    "Clean test inputs are the negatives, poisoned test inputs the positives. G's score is B''s doubt "
    "in B's answer, 1 - P_B'(B's label); STRIP's is minus the mean entropy of B on blends with "
    "clean validation images (Gao et al. 2019). AUROC 50 is chance; TPR is the share of "
    "poisoned inputs caught at the threshold that flags at most 5 % of the clean ones."
)


def detection_table(result: Measurement) -> str | None:
    """AUROC and TPR at 5 % FPR of every G, and of STRIP on B; None without both test sets."""
    rows = [(f"G ({m.name})", m.detection) for m in result.models if m.detection is not None]
    if result.strip is not None:
        rows.append(("STRIP on B", result.strip))
    if not rows:
        return None
    lines = [
        _row(["detector", "AUROC", f"TPR at {rows[0][1].fpr:g} % FPR", "clean inputs", "poisoned inputs"]),
        "|---" * 5 + "|",
    ]
    for name, score in rows:
        lines.append(_row([name, _pct(score.auroc), _pct(score.tpr), str(score.clean), str(score.poisoned)]))
    return "\n".join(lines)


def rules_table(result: Measurement) -> str:
    """Both stopping rules' choices per budget X: channels pruned and clean validation drop."""
    lines = [
        "| X | crossing: channels | crossing: valid drop | within: channels | within: valid drop |",
        "|---|---|---|---|---|",
    ]
    by_x: dict[float, dict] = {}
    for choice in result.thresholds:
        by_x.setdefault(choice.x, {})[choice.rule] = choice
    for x, rules in by_x.items():
        cells = []
        for rule in ("crossing", "within"):
            k, drop = rules[rule].channels_pruned, rules[rule].valid_drop
            cells += ["never" if k is None else str(k), "–" if k is None else f"{drop:.2f}"]
        lines.append(f"| {x:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def pruned_summary(result: Measurement) -> str:
    """What each B' pruned, in one line."""
    parts = []
    for m in result.models:
        layers = ", ".join(f"{len(c)} of {layer}" for layer, c in m.repaired.pruned.items()) or "no channels"
        parts.append(f"{m.name}: {layers}" + (", weights changed" if m.repaired.weights_changed else ""))
    return "; ".join(parts) or "no B' (no budget was reached)"


RELEARN_NOTE = (
    "Each B' (and the clean reference, a model of B's kind trained on clean data only) is tuned on the "
    "clean validation images with a few of them replaced by poisoned ones, as the Retuning Attack of "
    "Min et al. (NeurIPS 2024) tunes a purified model; the ASR is measured on the poisoned test images "
    "after every epoch. A B' whose ASR after tuning is more than the margin past the clean reference's "
    "(beyond the images' noise) held a dormant backdoor: the repair hid it rather than removed it."
)


def relearning_table(relearning) -> str:
    """One row per B' (and the clean reference): ASR before and after re-learning, how fast, the judgement."""
    s = relearning.settings
    rows = [
        "| model | ASR before | ASR after each epoch | ASR after (95 % CI) | epochs to 50 % | judged |",
        "|---|---|---|---|---|---|",
    ]
    entries = ([relearning.reference] if relearning.reference is not None else []) + list(relearning.models)
    for entry in entries:
        is_reference = entry is relearning.reference
        a = entry.asr_after
        rows.append(
            f"| {'clean reference' if is_reference else entry.model} | {entry.asr_before.value:.2f} | "
            + ", ".join(f"{v:.1f}" for v in entry.asr_by_epoch)
            + f" | {a.value:.2f} ({a.low:.1f}-{a.high:.1f}) | {entry.epochs_to_half or '–'} | "
            + ("reference" if is_reference else (entry.state or "not judged (no clean reference)"))
            + " |"
        )
    setup = (
        f"Tuned {s.epochs} epochs on {relearning.tuning_images} clean validation images, {s.poisoned} of them "
        f"replaced by poisoned ones; SGD rate {s.lr:g}, momentum {s.momentum:g}, batches of {s.batch_size}, seed "
        f"{s.seed}; margin {s.margin:g} points; clean reference: {relearning.reference_name or 'none given'}."
    )
    return "\n".join(rows) + "\n\n" + setup


def verdict_lines(result: Measurement) -> list[str]:
    """One verdict per B' (with 95 % intervals), the re-learning test's lines when it ran, then the
    next step when the backdoor survived."""
    lines = ["verdict: " + v.line() for v in result.verdicts]
    if result.relearning is not None:
        lines += result.relearning.lines()
    if result.next_step is not None:
        lines.append(result.next_step.line())
    return lines


def summary_lines(result: Measurement, verdicts: bool = True) -> list[str]:
    """What `goodnet defend` prints: the oracle warning, what was done, the table, and last (unless
    not `verdicts`, for a caller that prints more before them) the verdict on each B' and the next step."""
    lines = [ORACLE_NOTE] if result.repair.oracle else []
    if forced_past_sanity(result):
        lines.append(forced_note(result))
    if result.curve is not None:
        curve = result.curve
        lines.append(
            f"layer {curve.layer} (cut {curve.cut}): {result.dead_channels} of "
            f"{curve.num_channels} channels dead on clean validation data"
        )
    else:
        lines.append(f"repair {result.repair.name}: {pruned_summary(result)} ({result.seconds:.1f} s)")
    if result.harm is not None:
        lines.append(result.harm.line(result.repair))
    lines.append(summary_table(result) if result.data else "no data given: models only")
    detection = detection_table(result)
    if detection is not None:
        lines += ["detection (AUROC, TPR at 5 % FPR on the test sets):", detection]
    return lines + (verdict_lines(result) if verdicts else [])


def forced_past_sanity(result: Measurement) -> bool:
    return result.sanity is not None and result.sanity.forced_past


def forced_note(result: Measurement) -> str:
    s = result.sanity
    return FORCED_NOTE.format(accuracy=s.valid_accuracy, images=s.images, chance=s.chance)
