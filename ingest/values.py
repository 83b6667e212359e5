"""Metadata values checked on write (SPEC 13): a store's categories stay one spelling each.

A categorical value given to a write (an ingest's flags or manifest, a label, a label manifest)
that equals a value its field already holds after case folding and removing spaces, ``-`` and
``_`` (``properties.fold``), but is not that value, is refused before anything is written, naming
the value held ("did you mean 'Face Detection'?"), unless the writer says it is a new value
(``--new-value``). Two such spellings given in one write are refused the same way. The
categorical fields: the built-in text labels (``CATEGORICAL_FIELDS``) and the text properties.

Also here: the metadata a model file needs to be ingested (``REQUIRED_FIELDS``), so that no
model enters a grouping as an unknown "(none)" group unless the writer says so (``--allow-missing``).
"""
from __future__ import annotations

from cnnfilterdb.properties import fold, ident
from cnnfilterdb.selection import echo

from .errors import IngestError

CATEGORICAL_FIELDS = ("task", "visual_category", "training_dataset", "pretraining_dataset", "name", "paper",
                      "accessible", "producer")
REQUIRED_FIELDS = ("task", "visual_category", "training_dataset")
MAX_HELD_VALUES = 100_000  # values of a field compared with (a field of more is no category)


def held_values(con, field: str, version: int) -> list[str]:
    """The values ``field`` holds among the models of store version ``version`` (a task: its
    normalized and its raw labels)."""
    columns = ["task", "task_raw"] if field == "task" else [field]
    union = " UNION ".join(f"SELECT {ident(c)} AS v FROM models_at({int(version)}) WHERE {ident(c)} IS NOT NULL"
                           for c in columns)
    return [v for (v,) in con.execute(f"SELECT DISTINCT v FROM ({union}) ORDER BY v LIMIT {MAX_HELD_VALUES}").fetchall()]


def check_spellings(con, version: int, given: list[tuple[str, str, str]], text_properties: set[str],
                    new_value: bool, held_properties: set[str] = frozenset()) -> None:
    """IngestError for the first value of ``given`` ((field, value, where it was given) each) that
    is another spelling of a value its field holds at store version ``version`` or of one given
    before it; nothing when ``new_value``. The fields checked: CATEGORICAL_FIELDS and
    ``text_properties``, of which ``held_properties`` are columns of the store already."""
    if new_value:
        return
    seen: dict[str, dict[str, str]] = {}  # field -> folded -> the spelling first held or given
    problems: list[str] = []
    for field, value, where in given:
        if not isinstance(value, str) or (field not in CATEGORICAL_FIELDS and field not in text_properties):
            continue
        if field not in seen:
            seen[field] = {}
            if field in CATEGORICAL_FIELDS or field in held_properties:
                for v in held_values(con, field, version):
                    seen[field].setdefault(fold(v), v)
        known = seen[field].setdefault(fold(value), value)
        if known != value:
            problems.append(f"{where}: {field} {echo(value)} is another spelling of {known!r}, which the store "
                            f"already holds (or this write gives): did you mean {known!r}?")
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise IngestError("; ".join(dict.fromkeys(problems[:5])) + more + " (--new-value stores such a value as a "
                          "value of its own)")


def check_required(meta: dict, where: str) -> None:
    """IngestError naming the REQUIRED_FIELDS that ``meta`` lacks, and how to give them."""
    missing = [f for f in REQUIRED_FIELDS if not meta.get(f)]
    if missing:
        flags = ", ".join("--" + f.replace("_", "-") for f in missing)
        raise IngestError(f"{where}: a model file needs its task, visual category and training dataset; missing "
                          f"{', '.join(missing)}: give {flags} (or the manifest's columns of those names), or "
                          "--allow-missing to store them as unknown")
