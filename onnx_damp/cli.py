"""The `onnx-damp` command line: thin wrappers over onnx_damp.api (imported lazily, so --help is fast)."""
from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path

import click

from onnx_damp import __version__
from onnx_damp.options import FEATURE_MODES, MethodOptions, RunOptions
from onnx_damp.errors import GATE_FAILED, DampError


def _user_errors(fn):
    """Show DampError as one line on stderr with exit code 2; let real bugs keep their traceback."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except DampError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted (nothing was written)", err=True)
            sys.exit(130)
    return wrapper


def _class_list(values) -> list[str]:
    """--forget 3 --forget 5, or --forget 3,5: every class named, in order."""
    return [part.strip() for v in values for part in str(v).split(",") if part.strip()]


def _write_json_atomic(path: Path, payload: dict) -> None:
    from onnx_damp.fileio import atomic_write
    atomic_write(path, lambda f: json.dump(payload, f, indent=2))


def _check_report_path(path: str | None) -> None:
    if path is None:
        return
    folder = Path(path).parent if str(Path(path).parent) else Path(".")
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise DampError(f"cannot write the report: folder {folder} does not exist or is not writable")


_PATH_ARGS = ("model", "data", "eval_data", "train_data", "original", "reference", "labels", "output", "report")


def _html_option(fn):
    """--html REPORT.html: checked before any work (matplotlib importable, path not an input or output);
    the command calls _write_html(result) once it has a result (before its gates can exit)."""
    @functools.wraps(fn)
    def wrapper(*args, html=None, **kwargs):
        if html is not None:
            from onnx_damp.report.html import check_html_path
            from onnx_damp.report.plots import require_matplotlib

            require_matplotlib()
            check_html_path(html, *(kwargs.get(k) for k in _PATH_ARGS))
        click.get_current_context().meta["onnx_damp.html"] = (html, kwargs.get("quiet", False),
                                                              kwargs.get("as_json", False))
        return fn(*args, **kwargs)
    return click.option("--html", type=click.Path(dir_okay=False), default=None,
                        help="Also write a self-contained HTML report with plots here (needs matplotlib: "
                             "pip install 'onnx-damp[report]', from a clone '.[report]').")(wrapper)


def _shows_layers(verbose: bool, as_json: bool, report) -> bool:
    """Whether this forget run prints or writes the per-layer plans (-v, --json, --report, --html): only then is
    each layer's whole-space separability, which never sets alpha, worth its d x d factorisation."""
    html = click.get_current_context().meta.get("onnx_damp.html", (None,))[0]
    return bool(verbose or as_json or report or html)


def _write_html(result) -> None:
    """Write the --html report of this command, if one was asked for (result: a result or its to_dict())."""
    html, quiet, as_json = click.get_current_context().meta.get("onnx_damp.html", (None, True, False))
    if html is not None:
        from onnx_damp.report.html import write_html

        write_html(result, html)
        if not quiet:  # beside "wrote MODEL" on stdout; on stderr when stdout is the JSON report
            click.echo(f"wrote HTML report {html}", err=as_json)


# --help sections: option (its parameter name) -> section; the rest go under "Other"
HELP_SECTIONS = {
    "Input": ("data", "stats_files", "forget_classes", "labels", "allow_missing_classes", "original", "reference",
              "train_data", "input_name", "output_name", "data_fingerprint"),
    "Method": ("features", "no_extra_directions", "max_passes", "target_forget_acc", "no_readout", "holdout"),
    "Validation and gates": ("eval_data", "feature_samples", "max_forget_acc", "max_retain_drop", "max_class_drop",
                             "min_cka_gain", "max_mia", "no_gates", "strict"),
    "Image preprocessing (image folders and idx/CIFAR files; not .npz)": (
        "preprocess_file", "resize", "center_crop", "mode", "mean", "std", "layout", "no_scale"),
    "Runtime": ("batch_size", "device", "ray", "ray_address"),
    "Output": ("output", "report", "html", "as_json", "quiet", "verbose", "help"),
}


class _SectionedCommand(click.Command):
    """A command whose --help lists its options in HELP_SECTIONS' sections instead of one long list."""

    def format_options(self, ctx, formatter):
        rows: dict[str, list] = {}
        for param in self.get_params(ctx):
            rec = param.get_help_record(ctx) if isinstance(param, click.Option) else None
            if rec is None:
                continue
            name = "help" if "--help" in param.opts else param.name
            section = next((s for s, names in HELP_SECTIONS.items() if name in names), "Other")
            rows.setdefault(section, []).append(rec)
        for section in list(HELP_SECTIONS) + ["Other"]:
            if section in rows:
                with formatter.section(section):
                    formatter.write_dl(rows[section])


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="onnx-damp")
def main() -> None:
    """Make a deployed ONNX classifier forget classes with DAMP, and prove it on held-out data.

    Exit codes: 0 success, 3 a gate failed (the tool's own targets unless --no-gates, and any --max-*/--min-*
    given; one-line summary on stderr; outputs still written), 2 bad input (one-line message), 1 internal
    error, 130 interrupted.
    """
    from onnx_damp.runtime.allocator import limit_malloc_arenas

    limit_malloc_arenas()


@main.command("inspect")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
@_user_errors
def inspect_cmd(model: str, as_json: bool) -> None:
    """List the operators DAMP can edit (and those it cannot, with why)."""
    from onnx_damp.api import inspect
    from onnx_damp.report.tables import inspect_table

    res = inspect(model)
    click.echo(json.dumps(res.to_dict(), indent=2) if as_json else inspect_table(res))


_device = click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
                       help="onnxruntime execution provider.")
_input_name = click.option("--input-name", default=None, help="Model input to feed (models with several inputs).")
_output_name = click.option("--output-name", default=None, help="Model output holding the logits (default: first).")
_feature_samples = click.option("--feature-samples", default=None, type=int,
                                help="Forget-class (and as many retain) test samples for the per-layer metrics "
                                     "(CKA, residual separability, bias shift), each run one at a time; 0 skips "
                                     "them. Default: 500 with --eval-data, --reference or (evaluate) --original, "
                                     "else 0.")


class _Fraction(click.ParamType):
    """A share written as a percentage (1%) or a fraction (0.01); a bare number of 1 or more is refused (is
    `1` one percent or all of it?)."""

    name = "FRACTION|PERCENT"

    def convert(self, value, param, ctx):
        if isinstance(value, float):
            return value
        text = str(value).strip()
        try:
            v = float(text[:-1]) / 100 if text.endswith("%") else float(text)
        except ValueError:
            self.fail(f"{value!r} is not a number: write a percentage (1%) or a fraction (0.01)", param, ctx)
        if not text.endswith("%") and v >= 1:
            self.fail(f"{text} is not a fraction: write {text}% for a percentage or {v / 100:g} as a fraction", param, ctx)
        return v


FRACTION = _Fraction()


def _gate_options(fn):
    """--max-forget-acc, --max-retain-drop, --max-class-drop, --min-cka-gain, --max-mia (fractions; exit code 3
    when one fails) and --no-gates; the tool's own targets fill the first three unless --no-gates."""
    for opt in reversed([
        click.option("--max-forget-acc", type=FRACTION, default=None,
                     help="Gate: forget-class accuracy at most this (1% or 0.01; default: the target, 1%)."),
        click.option("--max-retain-drop", type=FRACTION, default=None,
                     help="Gate: mean retain accuracy drop vs the original at most this (1% or 0.01; default 1%)."),
        click.option("--max-class-drop", type=FRACTION, default=None,
                     help="Gate: no retain class's accuracy down more than this vs the original (default 3%)."),
        click.option("--min-cka-gain", type=FRACTION, default=None,
                     help="Gate: CKA gain to the reference at the deepest layers at least this (e.g. 0.02)."),
        click.option("--max-mia", type=FRACTION, default=None,
                     help="Gate: forget member rate of the confidence membership attack at most this (5% or 0.05)."),
        click.option("--no-gates", is_flag=True,
                     help="Check only the gates given: not the tool's own targets (forget accuracy, mean and "
                          "per-class retain drop; retain ones need an original). The verdict is still printed."),
    ]):
        fn = opt(fn)
    return fn


DATA_HELP = ("an .npz with x and y, an image folder DIR/<class>/*.png|jpg|jpeg|bmp|webp, MNIST-style idx "
             "files (a torchvision root, <Name>/raw, or the t10k-images file for the test split) or CIFAR-10/100 "
             "python batches (cifar-10-batches-py, cifar-100-python, or a test_batch/test file)")


def _preprocess_options(fn):
    """--preprocess FILE and overrides (--resize, --center-crop, --mode, --mean, --std, --layout, --no-scale),
    handed to the command as one `preprocess` argument (a Preprocess; used for images, not for .npz)."""
    @functools.wraps(fn)
    def wrapper(*args, preprocess_file, resize, center_crop, mode, mean, std, layout, no_scale, **kwargs):
        pre = _user_errors(_make_preprocess)(preprocess_file, resize=resize, center_crop=center_crop, mode=mode,
                                             mean=mean, std=std, layout=layout, scale=False if no_scale else None)
        return fn(*args, preprocess=pre, **kwargs)

    for opt in reversed([
        click.option("--preprocess", "preprocess_file", type=click.Path(dir_okay=False),
                     help="Image preprocessing file (.json, or .toml on Python 3.11+) with keys resize, "
                          "center_crop, mode, scale, mean, std, layout, dtype; the options below override it."),
        click.option("--resize", type=int, default=None, help="Images: resize the shorter side to N pixels."),
        click.option("--center-crop", default=None, help="Images: centre crop N or HxW pixels (after --resize)."),
        click.option("--mode", type=click.Choice(["RGB", "L"]), default=None,
                     help="Images: colour mode, RGB (3 channels) or L (grey, 1 channel); default as stored."),
        click.option("--mean", default=None, help="Images: per-channel mean subtracted after scaling, "
                                                  "e.g. 0.485,0.456,0.406."),
        click.option("--std", default=None, help="Images: per-channel std divided by, e.g. 0.229,0.224,0.225."),
        click.option("--layout", type=click.Choice(["NCHW", "NHWC"]), default=None,
                     help="Images: model input layout (default NCHW)."),
        click.option("--no-scale", is_flag=True, help="Images: keep 0..255 instead of scaling to [0, 1]."),
    ]):
        wrapper = opt(wrapper)
    return wrapper


def _make_preprocess(path, **overrides):
    from onnx_damp.data.preprocess import Preprocess

    return (Preprocess.load(path) if path else Preprocess()).updated(**overrides)


def _gates(max_forget_acc, max_retain_drop, max_class_drop, min_cka_gain, max_mia):
    from onnx_damp.verify.measures import Gates

    return Gates(max_forget_acc=max_forget_acc, max_retain_drop=max_retain_drop, max_class_drop=max_class_drop,
                 min_cka_gain=min_cka_gain, max_mia=max_mia)


def _finish_gates(res) -> None:
    """Exit with GATE_FAILED and a one-line summary on stderr when a gate does not hold."""
    from onnx_damp.verify.measures import gates_summary

    if not res.passed:
        click.echo(gates_summary(res.gates), err=True)
        sys.exit(GATE_FAILED)


def _echo_verification(res, verbose: bool = True) -> None:
    """The verification tables and every gate line with -v; without it, the lines of the gates the user gave
    (a failed default gate is named by the `gate failed:` line on stderr)."""
    from onnx_damp.report.tables import verification_layers_table, verification_table

    tables = (verification_table(res.verification), verification_layers_table(res.verification)) if verbose else ()
    for text in tables:
        if text:
            click.echo()
            click.echo(text)
    shown = [g for g in res.gates if verbose or not g.default]
    if shown:
        click.echo()
        click.echo("\n".join(g.describe() for g in shown))


def _ray_options(fn):
    """--ray / --ray-address: collect statistics in Ray tasks (onnx-damp[ray])."""
    fn = click.option("--ray-address", default=None,
                      help="Collect on the Ray cluster at this address (e.g. ray://head:10001 or auto).")(fn)
    return click.option("--ray", is_flag=True,
                        help="Collect statistics in parallel Ray tasks on a local Ray instance (onnx-damp[ray]).")(fn)


@main.command("collect", cls=_SectionedCommand)
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--data", required=True, type=click.Path(), help=f"This shard's data: {DATA_HELP}.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Statistics file (.npz).")
@click.option("--forget", "forget_classes", multiple=True,
              help="Keep second moments only for these classes (the ones you will forget): much smaller files "
                   "for many classes. Default: every class, so the statistics serve any forget set.")
@click.option("--labels", type=click.Path(dir_okay=False),
              help="Class names, one per line (line i = class i), for --forget by name.")
@click.option("--batch-size", default=RunOptions.batch_size, show_default=True, type=int,
              help="Images per onnxruntime run (statistics and predictions).")
@click.option("--features", type=click.Choice(list(FEATURE_MODES)), default=MethodOptions.feature_mode,
              show_default=True, help="Feature mode (as in forget); every shard and the forget run must use the same.")
@click.option("--data-fingerprint", default="npz", show_default=True,
              help="A tag for how the data were made (e.g. 'imagenet-224-crop'); shards with different tags are "
                   "not merged (not the image preprocessing: that is --preprocess).")
@click.option("--preprocessing", "old_fingerprint", default=None, hidden=True)  # the old name of --data-fingerprint
@_ray_options
@_device
@_input_name
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@_preprocess_options
@_user_errors
def collect_cmd(model, data, output, forget_classes, labels, batch_size, features, data_fingerprint, old_fingerprint,
                ray, ray_address, device, input_name, quiet, preprocess=None) -> None:
    """Collect DAMP statistics of MODEL on one data shard; `forget --stats` merges any number of them."""
    from onnx_damp.api import collect

    st = collect(model, data, output, forget=_class_list(forget_classes) or None, labels=labels, batch_size=batch_size,
                 device=device, feature_mode=features, input_name=input_name,
                 preprocessing=data_fingerprint if old_fingerprint is None else old_fingerprint,
                 quiet=quiet, ray=ray, ray_address=ray_address, preprocess=preprocess)
    counts = ", ".join(f"{c}: {n}" for c, n in st.samples.items())
    click.echo(f"wrote {st.path}: {st.num_samples} samples ({counts}), {len(st.layers)} layers, "
               f"model sha256 {st.provenance.model_sha256[:12] or st.provenance.graph_sha256[:12]}")


@main.command("forget", cls=_SectionedCommand)
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--data", type=click.Path(),
              help=f"Calibration data: {DATA_HELP} (optional with --stats: then it serves passes 2 and later).")
@click.option("--stats", "stats_files", multiple=True, type=click.Path(dir_okay=False),
              help="Statistics from `onnx-damp collect`, merged and used for pass 1: repeat it, follow it with "
                   "more files (a shell glob), or quote a glob ('stats/*.npz').")
@click.argument("more_stats", nargs=-1, type=click.Path(dir_okay=False))
@_ray_options
@click.option("--forget", "forget_classes", required=True, multiple=True,
              help="Class to forget, by index or name (repeat for several).")
@click.option("--labels", type=click.Path(dir_okay=False),
              help="Class names, one per line (line i = class i); default: the model's class_names metadata.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Edited model path.")
@click.option("--eval-data", type=click.Path(), help="Held-out data to validate on (same formats as --data).")
@click.option("--report", type=click.Path(dir_okay=False), help="Write the full report as JSON here.")
@click.option("--batch-size", default=RunOptions.batch_size, show_default=True, type=int,
              help="Images per onnxruntime run (statistics and predictions).")
@click.option("--features", type=click.Choice(list(FEATURE_MODES)), default=MethodOptions.feature_mode, show_default=True,
              help="auto: Conv inputs per spatial position, token sequences by their class token (token 0); "
                   "position: every position/token row; pooled: Conv inputs per image after spatial pooling; "
                   "patch: Conv inputs as unfolded kernel-sized patches (in * k * k features), tokens as auto.")
@click.option("--no-extra-directions", is_flag=True,
              help="Use only the prototype residuals (rank = number of forget classes).")
@click.option("--max-passes", default=MethodOptions.max_passes, show_default=True, type=int,
              help="Most DAMP passes (statistics re-collected on the edited model before each further pass; a "
                   "pass is kept only when the held-out calibration images say it is better).")
@click.option("--target-forget-acc", default=MethodOptions.target_forget_accuracy, show_default=True, type=float,
              help="Forget accuracy the held-out calibration images should reach (passes, readout, warnings).")
@click.option("--no-readout", is_flag=True,
              help="Skip the readout stage: return DAMP's representation edit alone (the paper's form).")
@click.option("--holdout", default=MethodOptions.holdout, show_default=True, type=float,
              help="Share of each class's calibration images held out from the statistics; every choice "
                   "(candidate plan, passes, readout shift) is judged on them. 0: none.")
@click.option("--reference", type=click.Path(dir_okay=False),
              help="A model retrained without the class(es): JS divergence and per-layer CKA to it.")
@click.option("--allow-missing-classes", is_flag=True,
              help="Accept calibration data that lack some of the model's classes (an error otherwise).")
@click.option("--strict", is_flag=True, help="Treat warnings (suspicious data, missed bounds) as errors (exit 2).")
@_feature_samples
@_gate_options
@_preprocess_options
@_device
@_input_name
@_output_name
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON instead of tables.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@click.option("-v", "--verbose", is_flag=True, help="Also the per-layer, per-stage and verification tables.")
@_user_errors
@_html_option
def forget_cmd(model, data, stats_files, more_stats, ray, ray_address, forget_classes, labels, output, eval_data, report,
               batch_size, features, no_extra_directions, max_passes, target_forget_acc, no_readout, holdout, reference,
               allow_missing_classes, strict, feature_samples,
               max_forget_acc, max_retain_drop, max_class_drop, min_cka_gain, max_mia, no_gates, device, input_name,
               output_name, as_json, quiet, verbose, preprocess=None) -> None:
    """Edit MODEL so it forgets --forget classes; write the result to -o.

    Example: onnx-damp forget model.onnx --data calib.npz --forget 3 -o model_without_3.onnx --eval-data test.npz
    """
    from onnx_damp.api import forget
    from onnx_damp.report.tables import before_after_table, layers_table, reference_js_rows, stages_table, table

    _check_report_path(report)
    if more_stats and not stats_files:
        raise DampError(f"unexpected argument(s) {' '.join(more_stats)}: only --stats takes several files")
    res = forget(model, data, _class_list(forget_classes), output, eval_data=eval_data, batch_size=batch_size,
                 device=device, feature_mode=features, extra_directions=not no_extra_directions,
                 input_name=input_name, output_name=output_name, max_passes=max_passes,
                 target_forget_accuracy=target_forget_acc, quiet=quiet, reference=reference,
                 feature_samples=feature_samples,
                 gates=_gates(max_forget_acc, max_retain_drop, max_class_drop, min_cka_gain, max_mia),
                 default_gates=not no_gates, labels=labels, preprocess=preprocess,
                 stats=list(stats_files + more_stats) or None, ray=ray,
                 ray_address=ray_address, readout=not no_readout, holdout=holdout,
                 candidates=not no_extra_directions, allow_missing_classes=allow_missing_classes, strict=strict,
                 layer_probe=_shows_layers(verbose, as_json, report))
    payload = res.to_dict()
    if report:
        _write_json_atomic(Path(report), payload)
    _write_html(payload)
    if as_json:
        click.echo(json.dumps(payload, indent=2))
    else:
        if verbose:
            click.echo(layers_table(res))
            click.echo()
        click.echo(before_after_table(res.before, res.after, res.validated_on, res.class_names, res.gates))
        if verbose and res.readout is not None:
            click.echo()
            click.echo(stages_table(res))
        if verbose and res.reference_js is not None:
            click.echo()
            click.echo(table(["metric", "value"], reference_js_rows(res.reference_js),
                             title="Outputs against the reference (Jensen-Shannon, nats)"))
        _echo_verification(res, verbose)
        click.echo()
        click.echo(f"wrote {', '.join(res.written)}" + (f"; report {report}" if report else ""))
    for note in res.notes:
        click.echo(f"note: {note}", err=as_json)
    for line in res.warnings:
        click.echo(f"warning: {line}", err=True)
    if not as_json:  # --json carries it as "verdict"
        click.echo(res.verdict.line(res.class_names))
    _finish_gates(res)


@main.command("evaluate", cls=_SectionedCommand)
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--data", required=True, type=click.Path(), help=f"Labelled data: {DATA_HELP}.")
@click.option("--forget", "forget_classes", multiple=True,
              help="Forgotten class (index or name); default: the classes the edited model records.")
@click.option("--labels", type=click.Path(dir_okay=False),
              help="Class names, one per line (line i = class i); default: the model's class_names metadata.")
@click.option("--original", type=click.Path(dir_okay=False), help="The model before forgetting.")
@click.option("--reference", type=click.Path(dir_okay=False), help="A model retrained without the class(es).")
@click.option("--train-data", type=click.Path(),
              help="Training images of the model (e.g. the calibration data, same formats as --data): "
                   "enables membership inference.")
@click.option("--batch-size", default=256, show_default=True, type=int, help="Images per onnxruntime run.")
@_feature_samples
@_gate_options
@_preprocess_options
@_device
@_input_name
@_output_name
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@click.option("-v", "--verbose", is_flag=True, help="Also the per-layer, per-stage and verification tables.")
@_user_errors
@_html_option
def evaluate_cmd(model, data, forget_classes, labels, original, reference, train_data, batch_size, feature_samples,
                 max_forget_acc, max_retain_drop, max_class_drop, min_cka_gain, max_mia, no_gates, device,
                 input_name, output_name, as_json, quiet, verbose, preprocess=None) -> None:
    """Per-class, forget and retain accuracy of MODEL; agreement with --original; JS and CKA to --reference;
    membership inference with --train-data; gates for pipelines."""
    from onnx_damp.api import evaluate
    from onnx_damp.report.tables import class_label, goals, pct, per_class_table, reference_js_rows, table

    res = evaluate(model, data, _class_list(forget_classes) or None, original, reference, batch_size, device, input_name,
                   output_name, quiet, train_data=train_data, feature_samples=feature_samples,
                   gates=_gates(max_forget_acc, max_retain_drop, max_class_drop, min_cka_gain, max_mia),
                   default_gates=not no_gates, labels=labels, preprocess=preprocess)
    _write_html(res)
    if as_json:
        click.echo(json.dumps(res.to_dict(), indent=2))
        for line in res.warnings:
            click.echo(f"warning: {line}", err=True)
        _finish_gates(res)
        return
    s = res.summary
    if verbose:
        click.echo(per_class_table(s, res.original))
        click.echo()
    goal = goals(res.gates)
    rows = [["forget accuracy", pct(s.forget_accuracy), goal["forget"]],
            ["retain accuracy (mean of classes)", pct(s.retain_accuracy), "higher is better"],
            ["worst retain class", f"{class_label(s.worst_retain_class, res.class_names)} "
                                   f"({pct(s.worst_retain_accuracy)})", ""]]
    if res.original is not None:
        drop = res.original.retain_accuracy - s.retain_accuracy
        rows += [["retain accuracy change vs original", f"{-100 * drop:+.2f} pts", goal["retain"]],
                 ["retain agreement with original", pct(res.retain_agreement), "higher is better"],
                 ["retain KL(original || model)", f"{res.retain_kl:.4f}", "lower is better"]]
    if res.reference_js is not None:
        rows += [r + ["lower is better"] for r in reference_js_rows(res.reference_js)]
    click.echo(table(["metric", "value", "goal"], rows, title=f"Summary ({s.samples} samples)"))
    _echo_verification(res, verbose)
    for line in res.warnings:
        click.echo(f"warning: {line}", err=True)
    click.echo(res.verdict.line(res.class_names))
    _finish_gates(res)


if __name__ == "__main__":
    main()
