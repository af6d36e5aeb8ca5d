// kstatuscheck computes the kstatus result (the library Flux's health checks use,
// sigs.k8s.io/cli-utils/pkg/kstatus) of each object in a JSON array read from stdin, and prints a
// JSON array of {status, message}. Built and run by tests/unit/test_gitops_flux.py.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	kjson "k8s.io/apimachinery/pkg/util/json"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

func main() {
	raw, err := io.ReadAll(os.Stdin)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	var objs []map[string]interface{}
	// kjson decodes integers as int64, as the API machinery expects.
	if err := kjson.Unmarshal(raw, &objs); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	out := []map[string]string{}
	for _, o := range objs {
		res, err := status.Compute(&unstructured.Unstructured{Object: o})
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		out = append(out, map[string]string{"status": res.Status.String(), "message": res.Message})
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		os.Exit(1)
	}
}
