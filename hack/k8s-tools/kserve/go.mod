// Builds KServe's controller (cmd/manager) at v0.20.0, the release nearest the Python kserve==0.21.0
// pinned in pyproject.toml that the Go module proxy serves. KServe's go.mod pins controller-runtime, the
// k8s.io libraries and a few others with replace directives, which apply only inside KServe's own module;
// they are repeated here so that the manager is built with the versions it was released with.
module modelyard.local/k8s-tools/kserve

go 1.26.0

require github.com/kserve/kserve v0.20.0

tool github.com/kserve/kserve/cmd/manager

replace sigs.k8s.io/controller-runtime => sigs.k8s.io/controller-runtime v0.22.5

replace (
	k8s.io/api => k8s.io/api v0.34.5
	k8s.io/apiextensions-apiserver => k8s.io/apiextensions-apiserver v0.34.3
	k8s.io/apimachinery => k8s.io/apimachinery v0.34.5
	k8s.io/apiserver => k8s.io/apiserver v0.34.3
	k8s.io/client-go => k8s.io/client-go v0.34.5
	k8s.io/code-generator => k8s.io/code-generator v0.34.3
	k8s.io/component-base => k8s.io/component-base v0.34.3
	k8s.io/component-helpers => k8s.io/component-helpers v0.34.3
)

replace github.com/expr-lang/expr => github.com/expr-lang/expr v1.17.7

replace google.golang.org/grpc => google.golang.org/grpc v1.79.3

replace github.com/lyft/protoc-gen-validate => github.com/envoyproxy/protoc-gen-validate v1.0.4
