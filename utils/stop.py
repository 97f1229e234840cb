"""Stopping a run on a signal without losing its work: SLURM's warning before the time limit (SIGUSR1, see
sweep/slurm.py), SIGTERM (scancel, preemption, `kill`, a runner stopping its children) and Ctrl-C (SIGINT).

While training (`Stop.armed`), a stop signal only asks: the loop finishes the step it is in, saves a resume
state that holds its position inside the epoch, and exits with status 128 + the signal's number. Outside it
(building, loading) the signal ends the process at once as an exception (SIGINT: KeyboardInterrupt), so
`finally` blocks run and claims are released; nothing is lost there. Later signals are only noted: stopping
takes a step and one write. DataLoader workers leave the stop signals to the main process
(`ignore_stop_signals`): a Ctrl-C, or scancel's SIGTERM, reaches the whole process group, and a worker that
died of it would break the step being finished; the main process shuts its workers down itself.
"""
from __future__ import annotations

import contextlib
import os
import signal
import threading

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


class Stop:
    """The stop request of this process: `installed()` around a run, `armed()` around its training loop.
    `announce`: say on stderr that the signal came (written straight to the file descriptor: a handler must not
    use a buffered stream the interrupted code may be writing)."""

    def __init__(self, announce: bool = True):
        self.signum: int | None = None
        self._armed = False
        self.announce = announce

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def exit_status(self) -> int:
        return 128 + (self.signum or 0)

    @contextlib.contextmanager
    def installed(self):
        """This process's handler for the stop signals inside the block (the previous ones after it). Only the
        main thread can set handlers; elsewhere the block runs without."""
        main = threading.current_thread() is threading.main_thread()
        before = {sig: signal.signal(sig, self._handle) for sig in STOP_SIGNALS} if main else {}
        try:
            yield self
        finally:
            for sig, handler in before.items():
                signal.signal(sig, handler)

    @contextlib.contextmanager
    def armed(self):
        self._armed = True
        try:
            yield self
        finally:
            self._armed = False

    def request(self, signum: int) -> None:
        """What the handler does while armed: note the first signal (later ones change nothing)."""
        if self.signum is None:
            self.signum = signum
            if self.announce:
                msg = (f"\n{signal_name(signum)} received: finishing this step, then saving a resume state "
                       f"(kill -9 stops at once and loses the epoch's progress)\n")
                try:
                    os.write(2, msg.encode())
                except OSError:
                    pass

    def _handle(self, signum, frame) -> None:
        if self._armed:
            self.request(signum)
        elif signum == signal.SIGINT:
            raise KeyboardInterrupt
        else:
            raise SystemExit(128 + signum)


def ignore_stop_signals() -> None:
    """For DataLoader workers (called first in each): Ctrl-C and SLURM's warning are ignored; SIGTERM ends a
    worker only when its parent sends it (PyTorch's shutdown of a worker that did not stop in time), so a
    SIGTERM to the whole process group or job (scancel, a preemption) leaves the workers serving while the
    main process finishes its step. A worker whose parent died ends itself (PyTorch's watchdog)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the main process's handler, which fork copied
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # threads started later inherit the mask
    threading.Thread(target=_end_on_parents_sigterm, args=(os.getppid(),), daemon=True).start()


def _end_on_parents_sigterm(parent: int) -> None:
    while signal.sigwaitinfo({signal.SIGTERM}).si_pid != parent:
        pass
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    os.kill(os.getpid(), signal.SIGTERM)  # the default action, as the parent's shutdown of its workers expects
