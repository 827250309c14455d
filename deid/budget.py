"""The cost bound of de-identifying one message: how much free text, how much CPU.

The scrubber's patterns are linear in the text, so its cost is bounded by the text it is
given; this caps that text per message (``deid_max_text_chars``) and, as a backstop for
what no one foresaw, the CPU time the message may take (``deid_budget_ms``). Over either,
de-identification raises ``OverBudget`` (a ``DeidError``): the pipeline dead-letters the
message with the reason, never truncates its text and never scrubs it for minutes.

The CPU time is the thread's own (``time.thread_time``), so a loaded machine does not
make a normal message fail: other processes' work is not counted. Reading that clock
costs a system call (~0.7 µs, a message costs ~500 µs), so it is read only once enough
characters have been scrubbed since the last reading (``CHECK_EVERY``).
"""

from __future__ import annotations

import sys
import time

from core.errors import DeidError

__all__ = ["CHECK_EVERY", "MAX_KNOWN_SURNAMES", "MAX_VALUE_CHARS", "Budget", "OverBudget"]

# Characters of pattern passes between two readings of the clock: a pass over 64 Ki
# characters takes a few milliseconds, so a message overruns its budget by about that.
CHECK_EVERY = 1 << 16
# The longest identifying value the scrubber searches for. A value's pattern may cost its
# length at every place in a text where it can start; HL7 components are at most a few
# hundred characters (a street line 120, a name 194), so a longer "value" is refused.
MAX_VALUE_CHARS = 1024
# The most distinct Chinese surnames the people of one message (and its patients' known
# values) may have: a few dozen in practice, even over a long stay's staff. They make one
# alternation that sre tries at every character: 512 hold a pass over 256 KiB ~0.4 s.
MAX_KNOWN_SURNAMES = 512


class OverBudget(DeidError):
    """De-identifying this message would take more than its bound; the reason names the
    setting and the bound, never the message's content."""

    code = "deid-budget"


class Budget:
    """One message's allowance: ``admit`` each text before it is scrubbed, ``spend`` the
    work of each pass; both raise ``OverBudget`` once over. None: no such bound."""

    __slots__ = ("_cap", "_since_check", "_start", "chars", "max_cpu_s", "max_text_chars")

    def __init__(self, *, max_text_chars: int | None = None, max_cpu_ms: int | None = None) -> None:
        self.max_text_chars = max_text_chars
        self._cap = max_text_chars if max_text_chars is not None else sys.maxsize
        self.max_cpu_s = max_cpu_ms / 1000 if max_cpu_ms else None
        self.chars = 0
        self._since_check = 0
        self._start = time.thread_time() if self.max_cpu_s is not None else 0.0

    def admit(self, chars: int) -> None:
        """A text of ``chars`` characters is about to be scrubbed."""
        # Called for every text of every message: spend() inlined, no None test.
        self.chars += chars
        if self.chars > self._cap:
            limit = f"{self._cap:,} characters"
            raise OverBudget(f"the message holds more free text than deid_max_text_chars ({limit})")
        self._since_check += chars
        if self._since_check >= CHECK_EVERY:
            self._since_check = 0
            self.check()

    def spend(self, work: int) -> None:
        """A pass over ``work`` characters is about to run: read the clock now and then."""
        self._since_check += work
        if self._since_check >= CHECK_EVERY:
            self._since_check = 0
            self.check()

    def check(self) -> None:
        """Raise ``OverBudget`` if the message has used more CPU than its budget."""
        if self.max_cpu_s is not None and time.thread_time() - self._start > self.max_cpu_s:
            limit = f"{self.max_cpu_s * 1000:,.0f} ms"
            raise OverBudget(f"de-identifying the message took more CPU than deid_budget_ms ({limit})")
