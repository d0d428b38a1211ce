//go:debug x509negativeserial=1

// Command vault is the upstream HashiCorp Vault server at v1.13.0 (MPL-2.0), built
// from its Go module for the local test stack. Why not OpenBao or a newer Vault:
// see ../../README.md ("Vault").
//
// The go:debug line: gosnowflake, linked in by Vault's builtin database plugins,
// embeds a CA certificate with a negative serial number that Go >= 1.23 refuses
// at init.
package main

import (
	"os"

	"github.com/hashicorp/vault/command"
)

func main() {
	os.Exit(command.Run(os.Args[1:]))
}
