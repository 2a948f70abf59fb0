// Prints Knative's ingress.ComputeHash of one Ingress spec: the expected value in the unit
// test `hash_equals_knatives_compute_hash` (src/kubernetes/ingress/spec.rs). Run it from a
// module that requires knative.dev/networking (scripts/conformance.sh makes one):
// `go run knative-hash.go`.
package main

import (
	"fmt"

	"k8s.io/apimachinery/pkg/util/intstr"
	"knative.dev/networking/pkg/apis/networking/v1alpha1"
	"knative.dev/networking/pkg/ingress"
)

func main() {
	ing := &v1alpha1.Ingress{}
	ing.Namespace = "serving-tests"
	ing.Name = "probe-x"
	ing.Spec = v1alpha1.IngressSpec{
		Rules: []v1alpha1.IngressRule{{
			Hosts:      []string{"probe-x.example.com"},
			Visibility: v1alpha1.IngressVisibilityExternalIP,
			HTTP: &v1alpha1.HTTPIngressRuleValue{Paths: []v1alpha1.HTTPIngressPath{{
				Headers: map[string]v1alpha1.HeaderMatch{"K-Tag": {Exact: "a<b"}},
				Splits: []v1alpha1.IngressBackendSplit{{
					IngressBackend: v1alpha1.IngressBackend{ServiceNamespace: "serving-tests", ServiceName: "s", ServicePort: intstr.FromInt(77)},
					Percent:        100,
					AppendHeaders:  map[string]string{"b": "&", "a": "x"},
				}, {
					IngressBackend: v1alpha1.IngressBackend{ServiceNamespace: "serving-tests", ServiceName: "t", ServicePort: intstr.FromString("http")},
				}},
			}}},
		}},
		HTTPOption: v1alpha1.HTTPOptionEnabled,
	}
	h, err := ingress.ComputeHash(ing)
	if err != nil {
		panic(err)
	}
	fmt.Printf("%x\n", h)
}
