// Command testsum reads `go test -json` on stdin, prints go test's usual
// per-package lines and failing output, and ends with the plain summary line
// "N passed, N failed, N skipped". It exits 1 if any test or build failed.
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"strings"
)

type event struct {
	Action  string
	Package string
	Test    string
	Output  string
	Elapsed float64
}

func main() {
	var passed, failed, skipped, pkgFail int
	out := map[string][]string{} // test output, printed only if it fails
	sc := bufio.NewScanner(os.Stdin)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		var e event
		if json.Unmarshal(sc.Bytes(), &e) != nil {
			fmt.Println(sc.Text()) // build errors arrive as plain text
			continue
		}
		key := e.Package + " " + e.Test
		switch e.Action {
		case "output":
			if e.Test != "" {
				out[key] = append(out[key], e.Output)
			} else if strings.HasPrefix(e.Output, "ok ") || strings.HasPrefix(e.Output, "FAIL") ||
				strings.HasPrefix(e.Output, "---") || strings.Contains(e.Output, "[no test files]") ||
				strings.Contains(e.Output, "build failed") || strings.HasPrefix(e.Output, "panic") {
				fmt.Print(e.Output)
			}
		case "build-output":
			fmt.Print(e.Output)
		case "build-fail":
			pkgFail++
		case "pass", "fail", "skip":
			if e.Test == "" {
				if e.Action == "fail" {
					pkgFail++
				}
				continue
			}
			switch e.Action {
			case "pass":
				passed++
			case "skip":
				skipped++
				if !strings.Contains(e.Test, "/") {
					fmt.Printf("--- SKIP: %s (%s)\n", e.Test, e.Package)
				}
			case "fail":
				failed++
				fmt.Printf("--- FAIL: %s (%s)\n", e.Test, e.Package)
				for _, l := range out[key] {
					fmt.Print("    ", l)
				}
			}
			delete(out, key)
		}
	}
	fmt.Printf("%d passed, %d failed, %d skipped\n", passed, failed, skipped)
	if failed > 0 || pkgFail > 0 {
		os.Exit(1)
	}
}
