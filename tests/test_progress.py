"""Progress under glio-kit run: plain lines with the time left, instead of widget bars nobody sees."""
import io
import os

from glio_kit import progress


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_lines_at_start_every_interval_and_at_the_end():
    clock, out = Clock(), io.StringIO()
    bar = progress.LineBar(total=100, desc="train DCGAN", unit="batch", interval=15, stream=out, clock=clock)
    for _ in range(10):
        clock.t += 1.0
        bar.update(1)
    assert out.getvalue().splitlines() == ["[train DCGAN] started: 0/100 batch"]  # 10 s < interval
    bar.set_postfix(epoch=3, loss_d="0.612")
    for _ in range(10):
        clock.t += 1.0
        bar.update(1)
    line = out.getvalue().splitlines()[-1]
    assert line.startswith("[train DCGAN] 15% (15/100 batch), epoch 3, loss_d 0.612; 15 s elapsed")
    assert line.endswith("about 1 min 25 s left")  # 85 batches at 1 s each
    bar.close()
    bar.close()  # once only
    last = out.getvalue().splitlines()[-1]
    assert last == "[train DCGAN] done: 20/100 batch in 20 s (epoch 3, loss_d 0.612)"


def test_resumed_bar_counts_the_rate_of_this_run_only():
    clock, out = Clock(), io.StringIO()
    bar = progress.LineBar(total=100, initial=50, unit="batch", interval=1, stream=out, clock=clock)
    clock.t = 10.0
    bar.update(10)  # 10 batches in 10 s, 40 to go
    assert out.getvalue().splitlines()[-1].endswith("about 40 s left")


def test_iterating_and_disabled():
    out = io.StringIO()
    assert list(progress.LineBar([1, 2, 3], desc="preprocess", stream=out)) == [1, 2, 3]
    assert out.getvalue().splitlines()[-1].startswith("[preprocess] done: 3/3 in ")  # no generic "it" unit
    quiet = io.StringIO()
    with progress.LineBar(total=3, disable=True, stream=quiet) as bar:
        bar.update(3)
    assert quiet.getvalue() == ""


def test_tqdm_is_a_line_bar_only_under_glio_kit_run(monkeypatch):
    monkeypatch.delenv(progress.PROGRESS_ENV, raising=False)
    assert not isinstance(progress.tqdm(total=2, disable=True), progress.LineBar)
    with progress.terminal_progress() as kwargs:
        assert os.environ[progress.PROGRESS_ENV] == "lines" and "stderr_file" in kwargs
        assert isinstance(progress.tqdm(total=2, disable=True, dynamic_ncols=True), progress.LineBar)
    assert progress.PROGRESS_ENV not in os.environ  # restored


def test_duration():
    assert [progress.duration(s) for s in (4.6, 75.3, 4000)] == ["5 s", "1 min 15 s", "1 h 06 min"]
