"""What reaches the terminal: raysl's lines and real errors, not Ray's chatter."""

from raysl.console import WorkerLineFilter, banner, duration


def test_worker_lines_keep_raysl_tracebacks_and_user_warnings():
    lines = [
        ("[raysl] epoch 1/3  loss 4.1  lr 0.1  200 img/s  time: data 3% comm 20% compute 77%  "
         "ETA 1m00s"),
        "Reporting training result 1: TrainingReport(checkpoint=None, metrics={}) from rank 1",
        "Setting up process group for: env:// [rank=0, world_size=2]",
        "/venv/lib/python3.11/site-packages/ray/data/x.py:436: RayDeprecationWarning: old",
        "  self.exclude_resources = exclude_resources",
        "/home/u/mine.py:3: UserWarning: your images are tiny",
        "  warnings.warn('your images are tiny')",
        "[2026-12-04 00:36:13,776 E 27054 27126] core_worker.cc:2465: Actor with class name",
        "Traceback (most recent call last):",
        '  File "loop.py", line 9, in train_epoch',
        "    raise RuntimeError('no batch')",
        "RuntimeError: no batch",
        "✔️  Dataset train_0 execution finished in 4.64 seconds",
        "[trial 1a2b3_00000] [raysl] run sweep-1a2b3_00000",
    ]
    f = WorkerLineFilter()
    kept = [line for line in lines if f.keep(line)]
    assert kept == [lines[0], lines[5], *lines[8:12], lines[13]]


def test_banner_frames_a_title_and_durations_read_easily():
    top, bottom = banner("raysl pretrain: summary")
    assert top == "=" * 30 + " raysl pretrain: summary " + "=" * 30 and len(bottom) == len(top)
    assert [duration(s) for s in (42, 75, 3700)] == ["42s", "1m15s", "1h01m"]
