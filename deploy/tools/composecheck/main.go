// composecheck loads compose files the way `docker compose config` does (compose-go: the compose
// specification's JSON schema, interpolation, overlay merge, consistency checks) and prints the
// resolved model as YAML, or the error and exit status 1. For machines without the docker client.
//
//	composecheck [--env-file F] [--profile P]... -f FILE [-f FILE]...
package main

import (
	"context"
	"fmt"
	"os"

	"github.com/compose-spec/compose-go/v2/cli"
)

func main() {
	var files, profiles, envFiles []string
	args := os.Args[1:]
	for i := 0; i < len(args); i++ {
		if i+1 >= len(args) {
			fail(fmt.Errorf("%s needs a value", args[i]))
		}
		switch args[i] {
		case "-f", "--file":
			files = append(files, args[i+1])
		case "--profile":
			profiles = append(profiles, args[i+1])
		case "--env-file":
			envFiles = append(envFiles, args[i+1])
		default:
			fail(fmt.Errorf("unknown argument %q", args[i]))
		}
		i++
	}
	opts, err := cli.NewProjectOptions(files,
		cli.WithOsEnv,
		cli.WithEnvFiles(envFiles...),
		cli.WithDotEnv,
		cli.WithProfiles(profiles),
		cli.WithName("graduate"),
	)
	if err != nil {
		fail(err)
	}
	project, err := opts.LoadProject(context.Background())
	if err != nil {
		fail(err)
	}
	out, err := project.MarshalYAML()
	if err != nil {
		fail(err)
	}
	os.Stdout.Write(out)
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, err)
	os.Exit(1)
}
