"""`%%lm` and `%lm`: thin IPython glue over `cell.run_cell` and `KernelSession`."""
from __future__ import annotations

import sys

from IPython.core.magic import Magics, line_cell_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring
from IPython.display import display
from traitlets import Bool, Float, HasTraits, Int, Unicode, observe

from lmnb.magics.cell import CellOptions, one_line, run_cell
from lmnb.magics.session import KernelSession, kernel_session
from lmnb.runtime.sampling_params import PARAMS

# the table's parameters that are %%lm options; cells are greedy unless told otherwise
CELL_PARAMS = tuple(p for p in PARAMS if p.cell)
CELL_DEFAULTS = {"temperature": 0.0}
_TRAITS = {int: Int, float: Float, bool: Bool, str: Unicode}


def _option(p) -> str:
    return "--" + p.user.replace("_", "-")


def _cell_options(fn):
    """One %%lm option per cell parameter of the table."""
    for p in reversed(CELL_PARAMS):
        fn = argument(_option(p), type=p.type, default=None, dest=p.user, help=p.doc)(fn)
    return fn


# `%config LmMagics.max_tokens = 64`: a configurable default per cell parameter
_CellDefaults = type("_CellDefaults", (HasTraits,), {
    p.user: _TRAITS[p.type](CELL_DEFAULTS.get(p.user, p.default), allow_none=True,
                            help=f"default of cells: {p.doc}").tag(config=True)
    for p in CELL_PARAMS})

HELP = """\
%%lm cell language
  @system / @user / @assistant   switch role (the model's chat template); none: raw text
  {{ expr }}                     Python in the notebook namespace; gen(...), select(...),
                                 ... become holes, other values are inserted as str(value)
  @fork [N] ... @join            branches (N copies) run in parallel from the shared prefix;
                                 a name captured in several branches becomes a list
%%lm options: -m MODEL  -o NAME  {cell_options}  --batch VAR
              --no-stream  --dry-run  --api-spec-tokens N (remote models)
%lm model SPEC | status | cache | cache clear | stats | help
%lm model openai:NAME [--base-url URL] [--api-key KEY] [--completion]
defaults: %config LmMagics.temperature = 0.0 (also model, {cell_names}, stream)"""

HELP = HELP.replace("{cell_options}", "  ".join(
    f"{_option(p)} {'N' if p.type is int else 'X'}" for p in CELL_PARAMS)).replace(
    "{cell_names}", ", ".join(p.user for p in CELL_PARAMS if p.user != "temperature"))

_PLACEHOLDER = {"text/plain": ""}


@magics_class
class LmMagics(Magics, _CellDefaults):
    """`%%lm` runs a cell of the lmnb prompt language; `%lm` manages the kernel's model."""

    model = Unicode("smollm2", help="model the first %%lm cell loads").tag(config=True)
    stream = Bool(True, help="show tokens as they arrive").tag(config=True)
    show_traceback = Bool(False, help="raise errors with a traceback (for debugging)").tag(config=True)

    def __init__(self, shell=None, session: KernelSession | None = None, **kwargs) -> None:
        super().__init__(shell, **kwargs)
        self.session = session or kernel_session()
        if not self.session.spec:
            self.session.default_spec = self.model

    @observe("model")
    def _model_changed(self, change) -> None:
        self.session.default_spec = change["new"]

    @magic_arguments()
    @argument("-m", "--model", default=None, help="model spec, or the name of a Runtime/backend variable")
    @argument("-o", "--out", default=None, help="store the ProgramState (list with --batch) in this variable")
    @_cell_options
    @argument("--batch", default=None, metavar="VAR", help="run once per item of VAR (dict keys become names)")
    @argument("--no-stream", action="store_true", help="show the result only when done")
    @argument("--dry-run", action="store_true", help="show the compiled prompt and holes; run nothing")
    @argument("--api-spec-tokens", type=int, default=None, metavar="N",
              help="remote models: fill several gens of an assistant turn with one N-token call")
    @argument("--base-url", default=None, help="%%lm model openai:NAME: an OpenAI-compatible server URL")
    @argument("--api-key", default=None, help="%%lm model openai:NAME: API key (default: $OPENAI_API_KEY)")
    @argument("--completion", action="store_true", help="%%lm model openai:NAME: use /v1/completions")
    @argument("command", nargs="*", help="%%lm: model SPEC | status | cache [clear] | stats | help")
    @line_cell_magic
    def lm(self, line: str = "", cell: str | None = None):
        """Run a cell of the lmnb prompt language, or manage the kernel's model.

        %%lm [-o NAME] ...   the cell is a prompt with {{ gen(...) }} holes, @roles, @fork
        %lm model SPEC       load SPEC once for the kernel (frees the previous model)
        %lm status | cache | cache clear | stats | help
        """
        try:
            args = parse_argstring(self.lm, line)
        except Exception as e:  # noqa: BLE001 - argparse's usage error, as one line
            return self._fail(f"%lm: {one_line(e)}")
        if cell is None:
            return self._line(args)
        if args.command:
            return self._fail(f"%%lm takes options only, got {' '.join(args.command)!r} (see %lm help)")
        return self._cell(args, cell)

    # -- %%lm -------------------------------------------------------------------
    def _cell(self, args, cell: str):
        ns = self.shell.user_ns
        try:
            backend = self._backend(args.model, ns)
        except Exception as e:  # noqa: BLE001
            return self._fail(one_line(e))
        sampling = {p.user: getattr(args, p.user) if getattr(args, p.user) is not None
                    else getattr(self, p.user) for p in CELL_PARAMS}
        opts = CellOptions(
            sampling=sampling, batch=args.batch,
            stream=self.stream and not args.no_stream, dry_run=args.dry_run, backend=backend,
            api_spec_tokens=args.api_spec_tokens)
        live = display(_PLACEHOLDER, raw=True, display_id=True) if opts.stream and not opts.dry_run \
            and opts.batch is None else None
        res = run_cell(cell, ns, opts, on_update=(live.update if live else None),
                       chat_template=getattr(backend, "chat_template", None))
        if live is not None:   # the live display ends as it began, so saved outputs compare equal
            live.update(_PLACEHOLDER, raw=True)
        if res.view is not None:
            display(res.view)
        if args.out and res.value is not None:
            ns[args.out] = res.value
        self.session.refresh_views()
        if res.interrupted:
            print("lmnb: interrupted; the partial text is kept and its KV slots are free", file=sys.stderr)
        if res.error:
            return self._fail(res.error)
        return None

    def _backend(self, model: str | None, ns):
        if model is None:
            return self.session.backend()
        from lmnb.lang.backend import Backend, as_backend, is_runtime

        value = ns.get(model) if model.isidentifier() else None
        if is_runtime(value) or isinstance(value, Backend):
            return as_backend(value)
        return self.session.load(model)

    # -- %lm --------------------------------------------------------------------
    def _line(self, args):
        cmd = args.command or ["help"]
        try:
            return self._command(cmd[0], cmd[1:], _remote_options(args))
        except Exception as e:
            if self.show_traceback:
                raise
            return self._fail(one_line(e))

    def _command(self, name: str, rest: list[str], remote: dict | None = None):
        from lmnb.widgets import CacheTreeView, ThroughputMeter

        s = self.session
        if remote and not (name == "model" and rest and rest[0].startswith("openai:")):
            return self._fail("--base-url / --api-key / --completion go with %lm model openai:NAME")
        if name == "model" and len(rest) == 1:
            s.load(rest[0], **(remote or {}))
            print(s.status().splitlines()[0])
        elif name == "status" and not rest:
            print(s.status())
        elif name == "cache" and not rest:
            view = CacheTreeView(s.require_runtime("%lm cache"))
            s.views.append(view)
            display(view)
        elif name == "cache" and rest == ["clear"]:
            print(s.clear_cache())
            s.refresh_views()
        elif name == "stats" and not rest:
            view = ThroughputMeter(s.require_runtime("%lm stats"))
            s.views.append(view)
            display(view)
        elif name == "help" and not rest:
            print(HELP)
        else:
            return self._fail(f"unknown command '%lm {' '.join([name, *rest])}'; "
                              "use model SPEC, status, cache, cache clear, stats or help")
        return None

    def _fail(self, message: str):
        if self.show_traceback:
            raise RuntimeError(message)
        print(f"lmnb: {message}", file=sys.stderr)


def _remote_options(args) -> dict:
    """The `%lm model openai:NAME` options that were given."""
    opts = {"base_url": args.base_url, "api_key": args.api_key}
    opts = {k: v for k, v in opts.items() if v is not None}
    if args.completion:
        opts["is_chat_model"] = False
    return opts
