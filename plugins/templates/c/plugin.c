// A taskhost plugin: handles batches of tasks taken from a queue.
//
// Memory: the batch given to the handler belongs to this function (free it
// with ..._list_task_free when done); the outcome list and every string in it
// must come from malloc (the bindings free them after the host has read
// them); strings passed to host functions stay yours; strings the host hands
// back (config values, error messages) become yours to free.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "handler_plugin.h"

typedef handler_plugin_string_t string_t;

static void log_line(taskhost_plugin_host_level_t level, const char *text) {
    string_t s = {(uint8_t *)text, strlen(text)};
    taskhost_plugin_host_log(level, &s);
}

// The value of config key `key` as a NUL-terminated string from malloc, or
// `fallback` copied.
static char *config(const char *key, const char *fallback) {
    string_t k = {(uint8_t *)key, strlen(key)};
    string_t v;
    if (!taskhost_plugin_host_get_config(&k, &v)) return strdup(fallback);
    char *out = malloc(v.len + 1);
    memcpy(out, v.ptr, v.len);
    out[v.len] = 0;
    handler_plugin_string_free(&v);
    return out;
}

// Enqueues `text` on queue `queue`; answers false (and logs why) if the host refused.
static bool enqueue(const char *queue, const char *text) {
    taskhost_plugin_host_new_task_t task = {0};
    task.queue = (string_t){(uint8_t *)queue, strlen(queue)};
    task.payload = (handler_plugin_list_u8_t){(uint8_t *)text, strlen(text)};
    taskhost_plugin_host_enqueued_t done;
    string_t err;
    if (taskhost_plugin_host_enqueue(&task, &done, &err)) return true;
    char line[300];
    snprintf(line, sizeof line, "cannot enqueue: %.*s", (int)err.len, (char *)err.ptr);
    log_line(TASKHOST_PLUGIN_HOST_LEVEL_WARN, line);
    handler_plugin_string_free(&err);
    return false;
}

// Answers one outcome per task, in batch order.
void exports_taskhost_plugin_handler_handle(exports_taskhost_plugin_handler_list_task_t *batch,
                                            exports_taskhost_plugin_handler_list_outcome_t *ret) {
    // Configuration: `--set greeting=hi` or `config = { greeting = "hi" }`.
    char *greeting = config("greeting", "hello");
    ret->len = batch->len;
    ret->ptr = calloc(batch->len, sizeof *ret->ptr);
    for (size_t i = 0; i < batch->len; i++) {
        taskhost_plugin_types_task_t *task = &batch->ptr[i];
        taskhost_plugin_types_outcome_t *out = &ret->ptr[i];
        char line[200];
        snprintf(line, sizeof line, "%s: task %llu, %zu bytes", greeting,
                 (unsigned long long)task->id, task->payload.len);
        log_line(TASKHOST_PLUGIN_HOST_LEVEL_INFO, line);
        out->tag = TASKHOST_PLUGIN_TYPES_OUTCOME_DONE;
        if (task->queue.len == 9 && memcmp(task->queue.ptr, "followups", 9) == 0) continue;
        if (task->payload.len == 0) {
            // Dead-letters this task only, with the reason.
            out->tag = TASKHOST_PLUGIN_TYPES_OUTCOME_FAIL;
            handler_plugin_string_dup(&out->val.fail, "empty payload");
            continue;
        }
        // A follow-up task, for whatever serves the `followups` queue.
        snprintf(line, sizeof line, "after %llu", (unsigned long long)task->id);
        if (!enqueue("followups", line)) {
            out->tag = TASKHOST_PLUGIN_TYPES_OUTCOME_RETRY;
            out->val.retry.is_some = false;
        }
    }
    free(greeting);
    exports_taskhost_plugin_handler_list_task_free(batch);
}
