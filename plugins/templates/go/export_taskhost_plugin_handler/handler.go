// Package export_taskhost_plugin_handler is the plugin's handler: the
// generated bindings (wit_exports.go) call Handle with each batch.
package export_taskhost_plugin_handler

import (
	"fmt"

	host "wit_component/taskhost_plugin_host"
	types "wit_component/taskhost_plugin_types"

	witTypes "go.bytecodealliance.org/pkg/wit/types"
)

// Handle answers one outcome per task, in batch order.
func Handle(batch []types.Task) []types.Outcome {
	// Configuration: `--set greeting=hi` or `config = { greeting = "hi" }`.
	greeting := host.GetConfig("greeting").SomeOr("hello")
	outcomes := make([]types.Outcome, 0, len(batch))
	for _, task := range batch {
		host.Log(host.Level_Info, fmt.Sprintf("%s: task %d, %d bytes", greeting, task.Id, len(task.Payload)))
		if task.Queue == "followups" {
			outcomes = append(outcomes, types.MakeOutcomeDone())
			continue
		}
		if len(task.Payload) == 0 {
			// Dead-letters this task only, with the reason.
			outcomes = append(outcomes, types.MakeOutcomeFail("empty payload"))
			continue
		}
		// A follow-up task, for whatever serves the `followups` queue.
		result := host.Enqueue(types.NewTask{
			Queue:     "followups",
			Payload:   []byte(fmt.Sprintf("after %d", task.Id)),
			UniqueKey: witTypes.None[string](),
			DelayMs:   witTypes.None[uint64](),
		})
		if result.IsErr() {
			host.Log(host.Level_Warn, "cannot enqueue: "+result.Err())
			outcomes = append(outcomes, types.MakeOutcomeRetry(witTypes.None[uint64]()))
			continue
		}
		outcomes = append(outcomes, types.MakeOutcomeDone())
	}
	return outcomes
}
