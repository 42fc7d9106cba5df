"""What every subcommand shares: loading the dataset it names, and the one line printed when
the FiftyOne database cannot be reached (exit status :data:`EXIT_DATABASE`)."""
from __future__ import annotations

import os
import sys

from ..overwrite import worded


EXIT_DATABASE = 4  # the FiftyOne database cannot be reached


def database_unreachable(err: BaseException) -> bool:
    """Whether ``err`` (or what caused it) is pymongo failing to reach the database server:
    FiftyOne's ``ConnectionError("Could not connect to `mongod`")`` at the first connection, or a
    ``ServerSelectionTimeoutError`` / ``AutoReconnect`` / ``NetworkTimeout`` later on."""
    try:
        from pymongo.errors import ConnectionFailure
    except ImportError:  # pragma: no cover - a FiftyOne requirement
        return False
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, ConnectionFailure):
            return True
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return False


def safe_database_uri(uri: str | None) -> str | None:
    """``uri`` without the user name, password and options (``mongodb://user:pw@host:1/?x=y`` ->
    ``mongodb://host:1``)."""
    if not uri:
        return None
    scheme, sep, rest = str(uri).partition("://")
    if not sep:
        return "<the configured database_uri>"
    hosts = rest.split("/", 1)[0].split("?", 1)[0].rpartition("@")[2]
    return f"{scheme}://{hosts}"


def database_error_line(err: BaseException) -> str:
    """One line saying which database cannot be reached, why, and what to check."""
    try:
        import fiftyone as fo

        uri = safe_database_uri(fo.config.database_uri)
    except Exception:  # pragma: no cover
        uri = safe_database_uri(os.environ.get("FIFTYONE_DATABASE_URI"))
    cause, seen = err, set()
    while cause is not None and id(cause) not in seen:  # the pymongo error says why (refused, timed out)
        seen.add(id(cause))
        if type(cause).__module__.startswith("pymongo"):
            break
        cause = cause.__cause__ or cause.__context__
    reason = str(cause if cause is not None else err).split(" (configured timeouts")[0].split(", Timeout:")[0]
    reason = " ".join(reason.split())[:200]
    where = f"at {uri}" if uri else "(the mongod FiftyOne starts itself; FIFTYONE_DATABASE_URI is not set)"
    return (f"error: the FiftyOne database {where} cannot be reached ({reason}); check that mongod is running "
            f"and reachable from this machine, and FIFTYONE_DATABASE_URI (or database_uri in the FiftyOne "
            f"config)")


def error_line(err: BaseException) -> str:
    """``error: <message>`` in the CLI's words (a refusal for want of overwrite says ``--overwrite``)."""
    return f"error: {worded(err, 'cli')}"


def load_dataset(name: str):
    """The dataset called ``name``, or None after printing an error (the caller exits 2)."""
    import fiftyone as fo

    if not fo.dataset_exists(name):
        print(f"error: no dataset named {name!r}", file=sys.stderr)
        return None
    return fo.load_dataset(name)


def load_view(args):
    """The dataset ``args.dataset`` and the view of ``args.sample_id`` (every sample when not
    given), or None after printing an error (the caller exits 2)."""
    dataset = load_dataset(args.dataset)
    if dataset is None:
        return None
    return dataset, (dataset.select(args.sample_id) if args.sample_id else dataset)
