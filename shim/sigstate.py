"""The signal state a guest starts with: the caller's, whatever Python did to its own.

Across exec the kernel resets caught signals to their default action but keeps ignored signals
ignored and keeps the blocked mask. Under binfmt_misc a program therefore starts with exactly
the dispositions and mask of whoever exec'd it; a guest started by the shim must too, or
``yes | head -1`` never dies of SIGPIPE and ``nohup`` stops protecting against SIGHUP. Between
the caller and the guest stand two things that change dispositions:

- The Python runtime. Before any Python code runs, interpreter start-up sets SIGPIPE and
  SIGXFSZ to SIG_IGN (so that writes fail with EPIPE/EFBIG instead of killing the process) and
  keeps no record of what they were; the frozen shim is no different, as PyInstaller's
  bootloader starts the interpreter with its signal handlers installed. Every other signal is
  left as it came, and the signal module records it when it is set up: ignored signals read
  back as SIG_IGN, and SIGINT gets Python's KeyboardInterrupt handler only when it was SIG_DFL.
  Neither Python nor the bootloader touches the mask.
- The supervisor, which forwards INT, TERM, HUP, QUIT, USR1 and USR2 to the command.

So ``capture()``, called first thing (the ``xshim`` command line and every role of the frozen
shim do), knows the caller's mask and every disposition except SIGPIPE's and SIGXFSZ's, whose
originals no longer exist anywhere in the process; those two are taken as SIG_DFL, which is what
container runtimes, builders' RUN steps and shells give a program. ``restore()`` runs in the
child just before its first exec and puts that state back: ignored signals ignored, everything
else default, the mask as it was.
"""

from __future__ import annotations

import signal
from typing import NamedTuple

# Set to SIG_IGN by the interpreter's start-up, their original lost.
RUNTIME_IGNORED = frozenset({signal.SIGPIPE, signal.SIGXFSZ})
_UNCATCHABLE = frozenset({signal.SIGKILL, signal.SIGSTOP})


class SignalState(NamedTuple):
    ignored: frozenset[int]  # signals the caller set to SIG_IGN
    mask: frozenset[int]  # signals the caller blocked


def capture() -> SignalState:
    """The caller's signal state, read from this process before it installs any handler."""
    ignored = set()
    for sig in signal.valid_signals():
        if sig in _UNCATCHABLE or sig in RUNTIME_IGNORED:
            continue
        if signal.getsignal(sig) == signal.SIG_IGN:
            ignored.add(int(sig))
    mask = frozenset(int(s) for s in signal.pthread_sigmask(signal.SIG_BLOCK, ()))
    return SignalState(frozenset(ignored), mask)


_original: SignalState | None = None


def original() -> SignalState:
    """The state captured at start (captured now if nothing did it earlier)."""
    global _original
    if _original is None:
        _original = capture()
    return _original


def restore(state: SignalState) -> None:
    """Give this process ``state``: ignored signals ignored, all others default, the mask.

    Meant for the child between fork and exec; handlers are replaced, not just left for exec
    to reset, so that nothing of the supervisor's runs in the child before its exec.
    """
    for sig in signal.valid_signals():
        if sig in _UNCATCHABLE:
            continue
        want = signal.SIG_IGN if sig in state.ignored else signal.SIG_DFL
        if signal.getsignal(sig) != want:
            signal.signal(sig, want)
    signal.pthread_sigmask(signal.SIG_SETMASK, state.mask)
