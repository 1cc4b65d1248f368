"""Write the tutorial notebooks and execute them (outputs stored: plain HTML and text).

    python notebooks/build.py            # all of them
    python notebooks/build.py 02         # the ones whose name contains "02"

Cells marked `check` compare their outputs under `pytest --nbval-lax notebooks/`:
a `# NBVAL_CHECK_OUTPUT` line for Python cells, the `nbval-check-output` tag for
`%%lm` cells (a cell magic must stay on the first line).
"""
from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).parent
CHECK = "# NBVAL_CHECK_OUTPUT\n"


def md(src: str):
    return nbformat.v4.new_markdown_cell(src.strip())


def code(src: str, check: bool = False, raises: bool = False):
    """A code cell; `raises`: the cell fails on purpose (nbclient and nbval expect it)."""
    src = src.strip()
    cell = nbformat.v4.new_code_cell(src)
    tags = ["raises-exception"] if raises else []
    if check and src.startswith("%%"):
        tags.append("nbval-check-output")
    elif check:
        cell.source = CHECK + src
    if tags:
        cell.metadata["tags"] = tags
    return cell


QUICKSTART = [
    md("""
# lmnb quickstart

lmnb keeps a language model inside the Jupyter kernel. A `%%lm` cell is a prompt with
*holes*: `{{ gen(...) }}` generates text, `{{ select(...) }}` picks an option. The
runtime keeps a radix-tree KV cache alive between cells, so cells that share a prefix
do not pay for it twice. Everything here runs on the CPU with the embedded SmolLM2-135M
model and greedy decoding, so the outputs are reproducible.
"""),
    code("%load_ext lmnb"),
    md("`%lm model` loads a model once for the whole kernel (the first `%%lm` cell would load `smollm2` by itself)."),
    code("%lm model smollm2", check=True),
    md("""
A cell: `@system` / `@user` / `@assistant` lines switch roles, `{{ expr }}` is Python
evaluated in the notebook. `-o st` keeps the result (a `ProgramState`). While it runs
the text streams into the output; then the view shows the prompt (grey), the generated
text (green) and the captured variables.
"""),
    code('city = "Paris"'),
    code('''%%lm -o st
@system
You are a helpful assistant. Answer in one short sentence.
@user
What is {{ city }} famous for?
@assistant
{{ gen("answer", max_tokens=24) }}''', check=True),
    code('st["answer"]', check=True),
    md("""
A prompt that ends in a space (or half a word) stops where the model would have read one
token, e.g. `" Paris"`. lmnb *heals* that boundary: it backs off the last prompt token and
lets the model regenerate it, so the hole continues as if the prompt had not been cut.
`token_healing=False` shows what happens without it:
"""),
    code('''%%lm -o healed
The capital of France is {{ gen("city", max_tokens=4, stop=".") }}''', check=True),
    code('''%%lm -o unhealed
The capital of France is {{ gen("city", max_tokens=4, stop=".", token_healing=False) }}''', check=True),
    md("`select` scores each option by its likelihood and appends the best one:"),
    code('''%%lm -o mood
@user
Is this review positive or negative? "The food was cold and the waiter was rude."
@assistant
{{ select("label", ["positive", "negative"]) }}''', check=True),
    md("The same program in Python (the cell language compiles to exactly this):"),
    code('''import lmnb as lm

@lm.function
def famous(s, city):
    s += lm.system("You are a helpful assistant. Answer in one short sentence.")
    s += lm.user(f"What is {city} famous for?")
    s += lm.assistant(lm.gen("answer", max_tokens=24))

famous.run(city="Paris", temperature=0)["answer"] == st["answer"]''', check=True),
    code("%lm status"),
]

CONSTRAINED = [
    md("""
# Constrained output

A hole can be constrained by a regular expression, a JSON schema (a dict or a pydantic
model) or a Python type. The runtime turns the constraint into a finite-state machine
and masks the model's tokens; text the machine forces (like `{"name": "`) is inserted
in one step (*jump-forward*, shown in amber in the view) instead of token by token.
"""),
    code("%load_ext lmnb"),
    code('''from pydantic import BaseModel

class City(BaseModel):
    name: str
    country: str
    population_millions: int'''),
    code('''%%lm -o city
@user
Describe Tokyo as JSON with the name, the country and the population in millions.
@assistant
{{ gen("info", json_schema=City, max_tokens=48) }}''', check=True),
    md("""The captured value is parsed with the schema: here a `City` instance. (A 135M-parameter
model is no encyclopedia: the constraint guarantees the shape of the answer, not its truth.)"""),
    code('city["info"]', check=True),
    code('''%%lm -o facts
@user
When was the Eiffel Tower finished, and how tall is it in metres?
@assistant
Year: {{ gen("year", regex=r"1[0-9]{3}") }}
Height: {{ gen("height", regex=r"[1-9][0-9]{1,2}") }} metres
Material: {{ select("material", ["iron", "stone", "wood"]) }}''', check=True),
    code('facts["year"], facts["height"], facts["material"]', check=True),
    md("""A mistake in a cell fails the cell with one line giving its position (the `%%lm` line
is line 1), so *Run All* stops there:"""),
    code('''%%lm
@user
Pick a number: {{ gen("n", regex="[0-9") }}''', check=True, raises=True),
]

FORK_BATCH = [
    md("""
# Fork and batch

`@fork` starts a branch; consecutive branches run **in parallel** from the shared
prefix, whose KV cache they share. `@fork N` runs the same block N times. A name
captured in several branches becomes a list. `@join` continues the main text.
"""),
    code("%load_ext lmnb"),
    code('''%%lm -o tips
@system
You are a concise travel guide.
@user
Give one tip for visiting Rome.
@assistant
@fork
For food: {{ gen("tip", max_tokens=16, stop="\\n") }}
@fork
For museums: {{ gen("tip", max_tokens=16, stop="\\n") }}
@fork
For transport: {{ gen("tip", max_tokens=16, stop="\\n") }}
@join'''),
    md("(The branches run concurrently, so how many tokens each one finds in the cache varies from run to run. "
       "With the CPU's default q4 weights a branch's words can also differ slightly between runs: its "
       "tokens may be computed beside different neighbours; `lm.Runtime(\"smollm2\", dtype=\"float32\")` "
       "is the exact path.)"),
    code('tips["tip"]'),
    md("""
`--batch VAR` runs the cell once per item (a dict's keys become names) through
continuous batching, with a progress bar; the result is a list of states.
"""),
    code('''questions = [{"q": "What is 2 + 2?"}, {"q": "What colour is the sky?"},
             {"q": "How many legs does a spider have?"}, {"q": "What is the capital of Japan?"}]'''),
    code('''%%lm --batch questions -o answers
@user
{{ q }} Answer in a few words.
@assistant
{{ gen("a", max_tokens=10) }}'''),
    code('''for s in answers:
    print(s.messages()[0]["content"], "->", s["a"])'''),
]

CACHE = [
    md("""
# The cache across cells

The KV cache lives as long as the kernel. When a cell starts with text that an earlier
cell already computed (a shared system prompt, or the same cell run again), those
tokens are read from the radix tree instead of being recomputed: the view's header
says how many prompt tokens came from the cache.
"""),
    code("%load_ext lmnb"),
    code('''%%lm -o a
@system
You are a careful assistant for a cooking website. You answer questions about recipes,
ingredients and kitchen techniques in one or two short sentences, without preamble.
@user
How long should I boil an egg for a soft yolk?
@assistant
{{ gen("answer", max_tokens=20) }}''', check=True),
    md("Same system prompt, new question: the shared prefix comes from the cache."),
    code('''%%lm -o b
@system
You are a careful assistant for a cooking website. You answer questions about recipes,
ingredients and kitchen techniques in one or two short sentences, without preamble.
@user
What can I use instead of butter in a cake?
@assistant
{{ gen("answer", max_tokens=20) }}''', check=True),
    md("Running the first cell again reads almost its whole prompt from the cache:"),
    code('''%%lm -o a2
@system
You are a careful assistant for a cooking website. You answer questions about recipes,
ingredients and kitchen techniques in one or two short sentences, without preamble.
@user
How long should I boil an egg for a soft yolk?
@assistant
{{ gen("answer", max_tokens=20) }}''', check=True),
    code('a2["answer"] == a["answer"]', check=True),
    md("""The live radix tree: each node holds a run of tokens; the shared system prompt is one
node with a child per question. (While the kernel runs, `%lm cache` and `%lm stats` redraw
themselves after every `%%lm` cell; the saved notebook keeps their last picture.)"""),
    code("%lm cache", check=True),
    md("Throughput of the engine so far (prefill and decode tokens/s, hit rate, KV pool use):"),
    code("%lm stats"),
    md("`%lm cache clear` frees every cached prefix (the views above would redraw as empty)."),
]

REMOTE = [
    md("""
# Remote models

lmnb programs also run on remote models: OpenAI, or any OpenAI-compatible server
(vLLM, SGLang, llama.cpp, `lmnb serve`). Here the kernel's own runtime is served over
HTTP on a free port of this machine, and `lm.OpenAI` talks to it through the official
`openai` client, exactly as it would talk to a model bigger than this machine.
"""),
    code('''import lmnb as lm
import lmnb.server

rt = lm.Runtime("smollm2")
server = lmnb.server.start_server(rt, port=0)      # what `lmnb serve` runs
remote = lm.OpenAI("smollm2", base_url=server.url, is_chat_model=False)
remote'''),
    md("""
## API speculative execution

A program with several `gen` fields would cost one API call per field. With
`num_api_spec_tokens`, one call generates the text of all fields at once; lmnb matches it
against the program's constant text and fills the fields (falling back to per-field calls
if the model strays from the format, never leaving a field empty).
"""),
    code('''@lm.function
def extract(s, name):
    s += "Name: Alan Turing\\nBirthdate: June 23, 1912\\nJob: mathematician\\n\\n"
    s += "Name: " + name + "\\nBirthdate: " + lm.gen("birth", max_tokens=12, stop="\\n")
    s += "\\nJob: " + lm.gen("job", max_tokens=12, stop="\\n")

plain = extract.run(name="Ada Lovelace", backend=remote, temperature=0)
spec = extract.run(name="Ada Lovelace", backend=remote, temperature=0, num_api_spec_tokens=32)
print("birthdate:", spec["birth"], "| job:", spec["job"])'''),
    md("""
The answer's wording can change with the machine (a near tie between two dates flips with
the CPU's float rounding); what speculation changes does not: one call instead of two, and
the same birthdate as the per-field call.
"""),
    code('''print("API calls without speculation:", plain.api_usage["calls"], "with:", spec.api_usage["calls"])
print("same birthdate as the per-field call:", spec["birth"] == plain["birth"])''', check=True),
    md("The raw `openai` client works against the same server, streaming included:"),
    code('''import openai

client = openai.OpenAI(base_url=server.url, api_key="-")
stream = client.completions.create(model="default", prompt="The alphabet starts with A, B,",
                                   max_tokens=8, temperature=0, stream=True)
print("".join(chunk.choices[0].text for chunk in stream))''', check=True),
    code("server.stop()\nrt.shutdown()"),
]

NOTEBOOKS = {
    "01-quickstart": QUICKSTART,
    "02-constrained-output": CONSTRAINED,
    "03-fork-and-batch": FORK_BATCH,
    "04-cache-across-cells": CACHE,
    "05-remote-models": REMOTE,
}


def build(name: str, cells: list) -> Path:
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(HERE)}},
                   extra_arguments=["--IPKernelApp.log_level=ERROR"]).execute()
    path = HERE / f"{name}.ipynb"
    nbformat.write(nb, path)
    return path


if __name__ == "__main__":
    wanted = sys.argv[1:]
    for name, cells in NOTEBOOKS.items():
        if not wanted or any(w in name for w in wanted):
            print(build(name, cells))
