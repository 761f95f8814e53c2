"""
The example scripts' shared command line: bad counts and method names are refused by the parser
(argparse's error, exit code 2) before anything runs, and results are never overwritten silently.
"""

import importlib

import pytest

from harness import Results, parser

# every script with a main, the positional arguments it needs, and the shared options it takes
SCRIPTS = {
    "bouncing_ball": ([], {"iterations"}),
    "bouncing_dot": ([], {"iterations"}),
    "digits": ([], {"iterations", "seeds", "methods"}),
    "four_regime": ([], {"iterations", "methods"}),
    "lds_benchmark": ([], {"iterations"}),
    "paper": (["fig2a"], {"iterations", "seeds", "methods"}),
    "pinwheel": ([], {"iterations"}),
    "real_sequences": ([], {"iterations", "methods"}),
    "segmentation_benchmark": ([], {"iterations", "seeds", "methods"}),
    "sequence_benchmark": ([], {"iterations", "seeds"}),
    "tabular": ([], {"seeds", "methods"}),
}
BAD = {
    "iterations": [["--iterations", "0"], ["--iterations", "-5"]],
    "seeds": [["--seeds", "0"]],
    "methods": [["--methods", "no-such-method"]],
}
CASES = [
    pytest.param(script, bad, id=f"{script}{''.join(bad)}")
    for script, (_, options) in SCRIPTS.items()
    for option in sorted(options)
    for bad in BAD[option]
]


def refused(capsys, main, argv) -> str:
    """The parser's error message for ``main(argv)``, which must exit with code 2."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("script, bad", CASES)
def test_every_script_refuses_bad_counts_and_methods_before_it_runs(script, bad, tmp_path, capsys):
    positional, _ = SCRIPTS[script]
    main = importlib.import_module(script).main
    out = tmp_path / "out"
    error = refused(capsys, main, [*positional, *bad, "--quick", "--no-progress", "--out", str(out)])
    assert "error:" in error and bad[0].lstrip("-") in error
    assert not out.exists()  # refused before anything ran


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_every_script_refuses_a_folder_with_results_unless_told_to_overwrite(script, tmp_path, capsys):
    positional, _ = SCRIPTS[script]
    stem = positional[0] if script == "paper" else "results"
    (tmp_path / f"{stem}.json").write_text("{}")
    main = importlib.import_module(script).main
    error = refused(capsys, main, [*positional, "--quick", "--no-progress", "--out", str(tmp_path)])
    assert f"--out {tmp_path} already holds results ({stem}.json)" in error and "--overwrite" in error
    assert (tmp_path / f"{stem}.json").read_text() == "{}"


def test_the_parser_checks_counts_methods_and_the_results_folder(tmp_path, capsys):
    command = parser("an experiment", "out", seed=0, seeds=1, iterations=None, seconds=None, methods=["A", "B"])
    args = command.parse_args(["--iterations", "3", "--seeds", "2", "--methods", "A,B", "--seconds", "0.5"])
    assert (args.iterations, args.seeds, args.methods, args.seconds, args.overwrite) == (3, 2, ["A", "B"], 0.5, False)
    for bad, message in [
        (["--iterations", "0"], "argument --iterations: must be at least 1, got 0"),
        (["--iterations", "-5"], "argument --iterations: must be at least 1, got -5"),
        (["--iterations", "many"], "argument --iterations: expected an integer, got 'many'"),
        (["--seeds", "0"], "argument --seeds: must be at least 1, got 0"),
        (["--seed", "-1"], "argument --seed: must be at least 0, got -1"),
        (["--seconds", "0"], "argument --seconds: must be positive, got 0.0"),
        (["--seconds", "nan"], "argument --seconds: must be positive, got nan"),
        (["--methods", "A,C"], "--methods: unknown ['C']; choose from ['A', 'B']"),
    ]:
        assert message in refused(capsys, command.parse_args, bad)

    # a missing folder is created at once, before any training, nested or not
    out = tmp_path / "new" / "nested"
    results = command.results(command.parse_args(["--out", str(out)]))
    assert out.is_dir() and results.out == out
    results.write("title", ["a table"], {"config": {}})
    # a second run into it is refused by the parser, unless told to overwrite
    error = refused(capsys, lambda argv: command.results(command.parse_args(argv)), ["--out", str(out)])
    assert f"--out {out} already holds results (results.md, results.json): pass --overwrite" in error
    command.results(command.parse_args(["--out", str(out), "--overwrite"])).write("again", [], {})
    assert (out / "results.md").read_text().startswith("# again")
    # results under another stem (another figure of the same script) are not in the way
    assert command.results(command.parse_args(["--out", str(out)]), stem="fig2b").stem == "fig2b"
    with pytest.raises(FileExistsError, match="already holds results"):
        Results(out)
