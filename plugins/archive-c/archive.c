// taskhost plugin that archives tasks to JSON Lines files (C version).
//
// Writes exactly what the Rust `archive` plugin writes (see
// plugins/archive/src/lib.rs): one file per non-empty batch named
// `<first id:020>-<last id:020>-<attempt of first task>-<16 hex random>.jsonl`,
// one JSON object per task with the fields id, queue, unique_key, attempt,
// enqueued_at_ms and payload (UTF-8 text) or payload_base64 (other bytes).
// The file is written under a hidden temporary name, synced, renamed, and the
// directory synced; on an I/O error every task of the batch is retried.
//
// Configuration: `dir`, the guest path of a preopened directory (default
// `/archive`).
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "handler_plugin.h"

typedef taskhost_plugin_types_task_t task_t;

enum { NAME_ATTEMPTS = 8 };

// A growable byte buffer; `failed` is set once an allocation failed.
typedef struct {
    char *ptr;
    size_t len, cap;
    int failed;
} buf_t;

static void put(buf_t *b, const void *data, size_t n) {
    if (b->failed) return;
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 4096;
        while (cap < b->len + n) cap *= 2;
        char *p = realloc(b->ptr, cap);
        if (!p) {
            b->failed = 1;
            return;
        }
        b->ptr = p;
        b->cap = cap;
    }
    memcpy(b->ptr + b->len, data, n);
    b->len += n;
}

static void puts_(buf_t *b, const char *s) { put(b, s, strlen(s)); }

static void putf(buf_t *b, const char *fmt, ...) {
    char tmp[64];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n > 0) put(b, tmp, (size_t)n < sizeof tmp ? (size_t)n : sizeof tmp - 1);
}

static void log_f(taskhost_plugin_host_level_t level, const char *fmt, ...) {
    char line[600];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    handler_plugin_string_t s = {(uint8_t *)line, strlen(line)};
    taskhost_plugin_host_log(level, &s);
}

// Appends s as a JSON string literal, escaped as serde_json does: quote,
// backslash and control characters (short forms where JSON has one, else
// \u00xx with lower-case hex); everything else as it is.
static void json_string(buf_t *b, const uint8_t *s, size_t n) {
    static const char hex[] = "0123456789abcdef";
    put(b, "\"", 1);
    for (size_t i = 0; i < n; i++) {
        uint8_t c = s[i];
        switch (c) {
        case '"': puts_(b, "\\\""); break;
        case '\\': puts_(b, "\\\\"); break;
        case '\b': puts_(b, "\\b"); break;
        case '\f': puts_(b, "\\f"); break;
        case '\n': puts_(b, "\\n"); break;
        case '\r': puts_(b, "\\r"); break;
        case '\t': puts_(b, "\\t"); break;
        default:
            if (c < 0x20) {
                char e[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
                put(b, e, 6);
            } else {
                put(b, &c, 1);
            }
        }
    }
    put(b, "\"", 1);
}

// True if s is valid UTF-8 (no overlong forms, no surrogates, nothing past U+10FFFF).
static int utf8_valid(const uint8_t *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        uint8_t c = s[i];
        size_t k;
        uint32_t min, cp;
        if (c < 0x80) { i++; continue; }
        else if ((c & 0xe0) == 0xc0) { k = 1; min = 0x80; cp = c & 0x1f; }
        else if ((c & 0xf0) == 0xe0) { k = 2; min = 0x800; cp = c & 0x0f; }
        else if ((c & 0xf8) == 0xf0) { k = 3; min = 0x10000; cp = c & 0x07; }
        else return 0;
        if (i + k >= n) return 0;
        for (size_t j = 1; j <= k; j++) {
            if ((s[i + j] & 0xc0) != 0x80) return 0;
            cp = (cp << 6) | (s[i + j] & 0x3f);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return 0;
        i += k + 1;
    }
    return 1;
}

static void base64(buf_t *b, const uint8_t *s, size_t n) {
    static const char a[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)s[i] << 16;
        if (i + 1 < n) v |= (uint32_t)s[i + 1] << 8;
        if (i + 2 < n) v |= s[i + 2];
        char out[4] = {a[v >> 18], a[(v >> 12) & 63], i + 1 < n ? a[(v >> 6) & 63] : '=',
                       i + 2 < n ? a[v & 63] : '='};
        put(b, out, 4);
    }
}

// Appends the JSON line of one task, with its trailing newline.
static void record(buf_t *b, const task_t *t) {
    putf(b, "{\"id\":%" PRIu64 ",\"queue\":", t->id);
    json_string(b, t->queue.ptr, t->queue.len);
    puts_(b, ",\"unique_key\":");
    if (t->unique_key.is_some)
        json_string(b, t->unique_key.val.ptr, t->unique_key.val.len);
    else
        puts_(b, "null");
    putf(b, ",\"attempt\":%" PRIu32 ",\"enqueued_at_ms\":%" PRIu64, t->attempt, t->enqueued_at_ms);
    if (utf8_valid(t->payload.ptr, t->payload.len)) {
        puts_(b, ",\"payload\":");
        json_string(b, t->payload.ptr, t->payload.len);
    } else {
        puts_(b, ",\"payload_base64\":\"");
        base64(b, t->payload.ptr, t->payload.len);
        puts_(b, "\"");
    }
    puts_(b, "}\n");
}

// Writes the batch to one new file in dir; answers 0 and its path, or -1 with
// the reason in `err`.
static int write_batch(const char *dir, const task_t *batch, size_t n, char *path, size_t path_len,
                       char *err, size_t err_len) {
    buf_t body = {0};
    for (size_t i = 0; i < n; i++) record(&body, &batch[i]);
    if (body.failed) {
        snprintf(err, err_len, "out of memory building %zu records", n);
        free(body.ptr);
        return -1;
    }
    for (int attempt = 0; attempt < NAME_ATTEMPTS; attempt++) {
        uint8_t random[8];
        if (getentropy(random, sizeof random) != 0) {
            snprintf(err, err_len, "cannot draw a random file name: %s", strerror(errno));
            break;
        }
        char name[128], tmp[PATH_MAX];
        int len = snprintf(name, sizeof name, "%020" PRIu64 "-%020" PRIu64 "-%" PRIu32 "-",
                           batch[0].id, batch[n - 1].id, batch[0].attempt);
        for (int i = 0; i < 8; i++) len += snprintf(name + len, sizeof name - len, "%02x", random[i]);
        snprintf(name + len, sizeof name - len, ".jsonl");
        snprintf(path, path_len, "%s/%s", dir, name);
        snprintf(tmp, sizeof tmp, "%s/.%s.tmp", dir, name);
        if (access(path, F_OK) == 0) continue;
        int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL, 0644);
        if (fd < 0 && errno == EEXIST) continue;
        if (fd < 0) {
            snprintf(err, err_len, "cannot create %s: %s", tmp, strerror(errno));
            free(body.ptr);
            return -1;
        }
        int ok = 1;
        for (size_t done = 0; ok && done < body.len;) {
            ssize_t w = write(fd, body.ptr + done, body.len - done);
            if (w < 0) ok = 0; else done += (size_t)w;
        }
        if (ok && fsync(fd) != 0) ok = 0;
        int saved = errno;
        if (close(fd) != 0 && ok) { ok = 0; saved = errno; }
        if (ok && rename(tmp, path) != 0) { ok = 0; saved = errno; }
        if (!ok) {
            unlink(tmp); // best effort: the original error is what matters
            snprintf(err, err_len, "cannot write %s: %s", tmp, strerror(saved));
            free(body.ptr);
            return -1;
        }
        free(body.ptr);
        return 0;
    }
    if (!err[0]) snprintf(err, err_len, "cannot find a free file name in %s", dir);
    free(body.ptr);
    return -1;
}

// Parses `.<first>-<last>-<attempt>-<16 hex>.jsonl.tmp`; answers 1 and the
// first task's id and attempt, or 0.
static int parse_temp_name(const char *name, uint64_t *first, uint32_t *attempt) {
    const char *suffix = ".jsonl.tmp";
    size_t n = strlen(name), sl = strlen(suffix);
    if (n < sl + 1 || name[0] != '.' || strcmp(name + n - sl, suffix) != 0) return 0;
    char part[4][64];
    size_t count = 0, len = 0;
    for (const char *p = name + 1; p < name + n - sl; p++) {
        if (*p == '-') {
            if (count >= 3) return 0;
            part[count++][len] = 0;
            len = 0;
        } else {
            if (len >= 63) return 0;
            part[count][len++] = *p;
        }
    }
    part[count++][len] = 0;
    if (count != 4 || strlen(part[3]) != 16) return 0;
    for (int i = 0; i < 3; i++) {
        if (!part[i][0]) return 0;
        for (const char *p = part[i]; *p; p++)
            if (*p < '0' || *p > '9') return 0;
    }
    *first = strtoull(part[0], NULL, 10);
    unsigned long long a = strtoull(part[2], NULL, 10);
    if (a > UINT32_MAX) return 0;
    *attempt = (uint32_t)a;
    return 1;
}

// Removes the temporary files that earlier, unfinished attempts of this
// batch's tasks left (a kill or a time limit mid-write). Best effort.
static void remove_orphans(const char *dir, const task_t *batch, size_t n) {
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        uint64_t first;
        uint32_t attempt;
        if (!parse_temp_name(e->d_name, &first, &attempt)) continue;
        for (size_t i = 0; i < n; i++) {
            if (batch[i].id != first || attempt >= batch[i].attempt) continue;
            char path[PATH_MAX];
            snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
            if (unlink(path) == 0)
                log_f(TASKHOST_PLUGIN_HOST_LEVEL_INFO, "archive: removed %s left by an unfinished attempt", path);
            else
                log_f(TASKHOST_PLUGIN_HOST_LEVEL_WARN, "archive: cannot remove %s: %s", path, strerror(errno));
            break;
        }
    }
    closedir(d);
}

static int sync_dir(const char *dir) {
    int fd = open(dir, O_RDONLY | O_DIRECTORY);
    if (fd < 0) return -1;
    int r = fsync(fd);
    int saved = errno;
    close(fd);
    errno = saved;
    return r;
}

void exports_taskhost_plugin_handler_handle(exports_taskhost_plugin_handler_list_task_t *batch,
                                            exports_taskhost_plugin_handler_list_outcome_t *ret) {
    ret->len = batch->len;
    ret->ptr = batch->len ? calloc(batch->len, sizeof *ret->ptr) : NULL;
    if (batch->len && !ret->ptr) abort(); // a trap: the host retries the batch
    if (batch->len == 0) {
        exports_taskhost_plugin_handler_list_task_free(batch);
        return;
    }
    char dir[PATH_MAX] = "/archive";
    handler_plugin_string_t key = {(uint8_t *)"dir", 3}, value;
    if (taskhost_plugin_host_get_config(&key, &value)) {
        if (value.len > 0 && value.len < sizeof dir) {
            memcpy(dir, value.ptr, value.len);
            dir[value.len] = 0;
        }
        handler_plugin_string_free(&value);
    }
    for (size_t i = 0; i < batch->len; i++) {
        if (batch->ptr[i].attempt > 1) {
            remove_orphans(dir, batch->ptr, batch->len);
            break;
        }
    }
    char path[PATH_MAX], err[600] = "";
    uint8_t tag = TASKHOST_PLUGIN_TYPES_OUTCOME_DONE;
    if (write_batch(dir, batch->ptr, batch->len, path, sizeof path, err, sizeof err) != 0) {
        log_f(TASKHOST_PLUGIN_HOST_LEVEL_ERROR, "archive: %s", err);
        tag = TASKHOST_PLUGIN_TYPES_OUTCOME_RETRY;
    } else {
        // The rename is durable once the directory is synced; if that is not
        // allowed, retrying would only archive the batch twice.
        if (sync_dir(dir) != 0)
            log_f(TASKHOST_PLUGIN_HOST_LEVEL_WARN, "archive: cannot sync directory %s: %s", dir, strerror(errno));
        log_f(TASKHOST_PLUGIN_HOST_LEVEL_DEBUG, "archive: wrote %zu task(s) to %s", batch->len, path);
    }
    for (size_t i = 0; i < batch->len; i++) ret->ptr[i].tag = tag; // retry carries none: the host's back-off
    exports_taskhost_plugin_handler_list_task_free(batch);
}
