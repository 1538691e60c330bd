// A taskhost plugin: handles batches of tasks taken from a queue.
import host from "taskhost:plugin/host@0.1.0";

function ascii(text) {
  return Uint8Array.from(text, (c) => c.charCodeAt(0));
}

export const handler = {
  // Answers one outcome per task, in batch order.
  handle(batch) {
    // Configuration: `--set greeting=hi` or `config = { greeting = "hi" }`.
    const greeting = host.getConfig("greeting") ?? "hello";
    return batch.map((task) => {
      host.log("info", `${greeting}: task ${task.id}, ${task.payload.length} bytes`);
      if (task.queue === "followups") return { tag: "done" };
      // A follow-up task, for whatever serves the `followups` queue.
      try {
        host.enqueue({
          queue: "followups",
          payload: ascii(`after ${task.id}`),
          uniqueKey: null,
          delayMs: null,
        });
        return { tag: "done" };
      } catch (reason) {
        host.log("warn", `cannot enqueue: ${reason}`);
        return { tag: "retry", val: null };
      }
    });
  },
};
