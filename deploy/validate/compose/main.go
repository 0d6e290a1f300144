// Loads a compose file the way `docker compose config` does (compose-go: schema validation, interpolation,
// env files, merge keys) and prints the normalised project.
package main

import (
	"context"
	"fmt"
	"os"

	"github.com/compose-spec/compose-go/v2/cli"
)

func main() {
	options, err := cli.NewProjectOptions(os.Args[1:], cli.WithWorkingDirectory("."), cli.WithOsEnv, cli.WithDotEnv, cli.WithResolvedPaths(true))
	if err != nil {
		fmt.Println("options:", err)
		os.Exit(2)
	}
	project, err := options.LoadProject(context.Background())
	if err != nil {
		fmt.Println("INVALID:", err)
		os.Exit(1)
	}
	out, err := project.MarshalYAML()
	if err != nil {
		fmt.Println("marshal:", err)
		os.Exit(1)
	}
	fmt.Print(string(out))
}
