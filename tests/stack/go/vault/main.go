//go:debug x509negativeserial=1

// Command vault is the upstream HashiCorp Vault server at v1.14.0 (the last
// MPL-2.0 release), built from its Go module for the local test stack. OpenBao
// cannot be fetched here (the module proxy refuses its versions), see README.md.
//
// The go:debug line: gosnowflake v1.6.18, linked in by Vault's builtin plugins,
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
