"""taskhost plugin that archives tasks to JSON Lines files (Python version).

Writes exactly what the Rust `archive` plugin writes (see
plugins/archive/src/lib.rs): one file per non-empty batch named
`<first id:020>-<last id:020>-<attempt of first task>-<16 hex random>.jsonl`,
one JSON object per task with the fields id, queue, unique_key, attempt,
enqueued_at_ms and payload (UTF-8 text) or payload_base64 (other bytes).
The file is written under a hidden temporary name, synced, renamed, and the
directory synced; on an I/O error every task of the batch is retried.

Configuration: `dir`, the guest path of a preopened directory (default
`/archive`).
"""

import base64
import json
import os
import secrets
from typing import List, Optional, Tuple

from wit_world import exports
from wit_world.imports import host
from wit_world.imports.host import Level
from wit_world.imports.types import Outcome, Outcome_Done, Outcome_Retry, Task

DEFAULT_DIR = "/archive"
NAME_ATTEMPTS = 8


def json_string(s: str) -> str:
    # ensure_ascii=False escapes exactly what serde_json escapes: quote,
    # backslash and control characters (\u00xx, lower-case hex).
    return json.dumps(s, ensure_ascii=False)


def record(task: Task) -> str:
    """The JSON line of one task, with its trailing newline."""
    key = "null" if task.unique_key is None else json_string(task.unique_key)
    head = (
        f'{{"id":{task.id},"queue":{json_string(task.queue)},"unique_key":{key},'
        f'"attempt":{task.attempt},"enqueued_at_ms":{task.enqueued_at_ms}'
    )
    try:
        text = task.payload.decode("utf-8")
        tail = f',"payload":{json_string(text)}}}\n'
    except UnicodeDecodeError:
        encoded = base64.b64encode(task.payload).decode("ascii")
        tail = f',"payload_base64":"{encoded}"}}\n'
    return head + tail


def file_name(first_id: int, last_id: int, attempt: int) -> str:
    return f"{first_id:020}-{last_id:020}-{attempt}-{secrets.token_hex(8)}.jsonl"


def write_batch(directory: str, batch: List[Task]) -> str:
    """Writes the batch to one new file in `directory`; answers its path."""
    body = "".join(record(t) for t in batch).encode("utf-8")
    for _ in range(NAME_ATTEMPTS):
        name = file_name(batch[0].id, batch[-1].id, batch[0].attempt)
        final = os.path.join(directory, name)
        tmp = os.path.join(directory, f".{name}.tmp")
        if os.path.lexists(final):
            continue
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        except FileExistsError:
            continue
        except OSError as e:
            raise OSError(f"cannot create {tmp}: {e.strerror or e}") from e
        try:
            try:
                view = memoryview(body)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, final)
        except OSError as e:
            try:
                os.remove(tmp)
            except OSError:
                pass  # best effort: the original error is what matters
            raise OSError(f"cannot write {tmp}: {e.strerror or e}") from e
        return final
    raise OSError(f"cannot find a free file name in {directory}")


def parse_temp_name(name: str) -> Optional[Tuple[int, int]]:
    """The first task's id and attempt in a temporary file's name
    (`.<first>-<last>-<attempt>-<random>.jsonl.tmp`), or None."""
    if not (name.startswith(".") and name.endswith(".jsonl.tmp")):
        return None
    parts = name[1 : -len(".jsonl.tmp")].split("-")
    if len(parts) != 4 or len(parts[3]) != 16:
        return None
    try:
        first, _last, attempt = int(parts[0]), int(parts[1]), int(parts[2])
    except ValueError:
        return None
    return first, attempt


def remove_orphans(directory: str, batch: List[Task]) -> None:
    """Removes the temporary files that earlier, unfinished attempts of this
    batch's tasks left (a kill or a time limit mid-write). Best effort."""
    attempts = {t.id: t.attempt for t in batch}
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        parsed = parse_temp_name(name)
        if parsed is None:
            continue
        first, attempt = parsed
        now = attempts.get(first)
        if now is not None and attempt < now:
            path = os.path.join(directory, name)
            try:
                os.remove(path)
                host.log(Level.INFO, f"archive: removed {path} left by an unfinished attempt")
            except OSError as e:
                host.log(Level.WARN, f"archive: cannot remove {path}: {e.strerror or e}")


def sync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Handler(exports.Handler):
    def handle(self, batch: List[Task]) -> List[Outcome]:
        if not batch:
            return []
        directory = host.get_config("dir") or DEFAULT_DIR
        if any(t.attempt > 1 for t in batch):
            remove_orphans(directory, batch)
        outcome: Outcome
        try:
            path = write_batch(directory, batch)
        except OSError as e:
            host.log(Level.ERROR, f"archive: {e}")
            outcome = Outcome_Retry(None)
        else:
            # The rename is durable once the directory is synced; if that is
            # not allowed, retrying would only archive the batch twice.
            try:
                sync_dir(directory)
            except OSError as e:
                host.log(Level.WARN, f"archive: cannot sync directory {directory}: {e}")
            host.log(Level.DEBUG, f"archive: wrote {len(batch)} task(s) to {path}")
            outcome = Outcome_Done()
        return [outcome for _ in batch]
