"""The bad-image ledger: decode tasks report what they skipped; the policy is enforced here.

One small Ray actor per source. Every read task reports, after each unit, how many images it
saw and which it skipped (with the reason). Decoding once (``data.cache: memory``), the driver
asks for the totals at the end and applies the policy to the exact counts. Streaming
(``data.cache: none``), every report is checked at once: the run fails as soon as the bad
fraction exceeds ``data.max_bad_fraction`` over at least :data:`MIN_SEEN` images (or all of them,
for a smaller source), naming the counts and the first bad files.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import ray

from raysl.config import DataConfig
from raysl.errors import DataError

MIN_SEEN = 500  # streaming: images seen before the bad fraction can stop the run
EXAMPLES = 10  # offending files kept for the report


@dataclass(frozen=True)
class DecodePolicy:
    """How image files are decoded and what happens to the bad ones (from ``data.*``)."""

    on_error: str = "skip"
    max_bad_fraction: float = 0.1
    max_pixels: int = 100_000_000
    min_side: int = 8

    @classmethod
    def of(cls, data: DataConfig) -> DecodePolicy:
        """The policy ``data`` asks for."""
        return cls(data.on_error, data.max_bad_fraction, data.max_image_pixels,
                   data.min_image_side)


DEFAULT_POLICY = DecodePolicy()


def check_bad_files(skipped: dict[str, int], total: int, policy: DecodePolicy,
                    field_name: str, path: str, examples: list[str]) -> None:
    """Stop the run when ``policy`` says so: any bad file under "fail", or too many of them.

    Raises:
        DataError: naming the policy field, the counts per reason and example files.
    """
    bad = sum(skipped.values())
    sample = "; ".join(examples[:5])
    if bad and policy.on_error == "fail":
        raise DataError(f"data.on_error='fail': {bad} of the {total} image files in {path} are "
                        f"bad {skipped}, e.g. {sample}. Set data.on_error=skip to skip them")
    if bad == total:
        raise DataError(f"{field_name}.path={path!r}: none of the {total} image files could be "
                        f"decoded {skipped}, e.g. {sample}")
    if bad > policy.max_bad_fraction * total:
        raise DataError(f"data.max_bad_fraction={policy.max_bad_fraction:g}: {bad} of the "
                        f"{total} image files in {path} ({100 * bad / total:.1f}%) are bad "
                        f"{skipped}, e.g. {sample}. Is {field_name}.path the right data? Raise "
                        "data.max_bad_fraction to train on the rest")


@dataclass
class Pass:
    """The counts of one pass over the source (streaming decodes every epoch again)."""

    seen: int = 0
    skipped: Counter[str] | None = None
    examples: list[str] | None = None

    def add(self, seen: int, skipped: dict[str, int], examples: list[str]) -> None:
        """Fold in one unit's report."""
        self.skipped = (self.skipped or Counter()) + Counter(skipped)
        self.examples = ((self.examples or []) + examples)[:EXAMPLES]
        self.seen += seen


@ray.remote(num_cpus=0)
class DecodeLedger:
    """Counts per pass; :meth:`report` returns the reason to stop, or "" to go on.

    Args:
        total: images listed.
        policy: what to do with bad images.
        field_name: the source's config field, e.g. ``data.source``.
        path: the source's path, for messages.
        streaming: check every report (True), or only when :meth:`totals` is asked (False).
    """

    def __init__(self, total: int, policy: DecodePolicy, field_name: str, path: str,
                 streaming: bool) -> None:
        self.total, self.policy, self.field_name, self.path = total, policy, field_name, path
        self.streaming = streaming
        self.passes: dict[int, Pass] = {}
        self.failure = ""

    def report(self, execution: int, seen: int, skipped: dict[str, int],
               examples: list[str]) -> str:
        """One unit's counts; in streaming mode, the policy's verdict so far."""
        p = self.passes.setdefault(execution, Pass())
        p.add(seen, skipped, examples)
        if self.streaming and not self.failure:
            self.failure = self._verdict(p)
        return self.failure

    def _verdict(self, p: Pass) -> str:
        skipped = dict(p.skipped or {})
        early = p.seen < min(MIN_SEEN, self.total)  # too few to judge a fraction on
        if not skipped or (early and self.policy.on_error != "fail"):
            return ""
        try:
            check_bad_files(skipped, p.seen, self.policy, self.field_name, self.path,
                            p.examples or [])
        except DataError as e:
            return f"{e} (after the first {p.seen} images of the stream)"
        return ""

    def totals(self) -> tuple[dict[str, int], list[str], int]:
        """``(skipped per reason, example files, images seen)`` of the first pass."""
        if not self.passes:
            return {}, [], 0
        first = self.passes[min(self.passes)]
        return dict(first.skipped or {}), list(first.examples or []), first.seen

    def verdict(self) -> str:
        """Why the stream was stopped, or ""."""
        return self.failure
