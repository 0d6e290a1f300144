// Strictly decodes every document of a rendered manifest stream into the real Kubernetes API types:
// unknown or misspelt fields and wrong types are errors.
package main

import (
	"bufio"
	"fmt"
	"io"
	"os"

	"k8s.io/apimachinery/pkg/runtime/serializer"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes/scheme"
)

func main() {
	factory := serializer.NewCodecFactory(scheme.Scheme, serializer.EnableStrict)
	decoder := factory.UniversalDeserializer()
	reader := utilyaml.NewYAMLReader(bufio.NewReader(os.Stdin))
	failed := 0
	count := 0
	for {
		doc, err := reader.Read()
		if err == io.EOF {
			break
		}
		if err != nil {
			fmt.Println("read:", err)
			os.Exit(2)
		}
		json, err := utilyaml.ToJSON(doc)
		if err != nil || string(json) == "null" {
			continue
		}
		obj, gvk, err := decoder.Decode(json, nil, nil)
		count++
		if err != nil {
			failed++
			fmt.Println("INVALID:", err)
			continue
		}
		fmt.Printf("ok %s %T\n", gvk.Kind, obj)
	}
	fmt.Printf("%d documents, %d invalid\n", count, failed)
	if failed > 0 {
		os.Exit(1)
	}
}
