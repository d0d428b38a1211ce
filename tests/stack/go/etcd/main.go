// Command etcd is the upstream etcd server, built from its Go module for the local
// test stack; one etcd serves every cluster's apiserver under its own key prefix.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
