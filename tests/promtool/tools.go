//go:build tools

// Package tools pins promtool, which checks the chart's PrometheusRule (`promtool test
// rules`) and the dashboard's PromQL against the controller's real metrics.
package tools

import (
	_ "github.com/prometheus/prometheus/cmd/promtool"
)
