// Command etcd runs etcd's own entry point; go.etcd.io/etcd/server/v3 has replace directives, so it is
// built through this module rather than with `go install`.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
