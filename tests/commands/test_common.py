import os
import signal

import pytest

from acestep.commands.common import interrupt_signals, stop_on_ctrl_c


def test_first_interrupt_requests_a_stop_and_the_second_aborts():
    before = signal.getsignal(signal.SIGINT)
    with stop_on_ctrl_c("the current file") as stop_requested:
        assert not stop_requested()
        os.kill(os.getpid(), signal.SIGINT)
        assert stop_requested()
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before


def test_ctrl_break_is_a_stop_where_the_platform_has_it(monkeypatch):
    monkeypatch.setattr(signal, "SIGBREAK", signal.SIGUSR1, raising=False)  # stands in for Windows' SIGBREAK
    assert interrupt_signals() == (signal.SIGINT, signal.SIGUSR1)
    before = signal.getsignal(signal.SIGUSR1)
    with stop_on_ctrl_c("the current file") as stop_requested:
        os.kill(os.getpid(), signal.SIGUSR1)
        assert stop_requested()
    assert signal.getsignal(signal.SIGUSR1) is before


def test_posix_has_only_ctrl_c(monkeypatch):
    monkeypatch.delattr(signal, "SIGBREAK", raising=False)
    assert interrupt_signals() == (signal.SIGINT,)
