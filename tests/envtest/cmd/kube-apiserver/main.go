// Command kube-apiserver is the upstream API server, built from its Go module so tests run
// against the real thing (see ../../README.md).
package main

import (
	"os"

	"k8s.io/component-base/cli"
	"k8s.io/kubernetes/cmd/kube-apiserver/app"
)

func main() {
	os.Exit(cli.Run(app.NewAPIServerCommand()))
}
