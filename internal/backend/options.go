package backend

import (
	"encoding/json"
	"errors"
	"reflect"
	"sort"
	"strings"

	"github.com/weft-net/weft/internal/config"
)

// DecodeOptions decodes the raw Backend object into opts, a pointer to a
// struct whose exported field names are the option keys. "Type" is always
// accepted. Unknown keys and values of the wrong JSON type are refused with a
// *config.FieldError naming "Backend.<Key>".
func DecodeOptions(raw json.RawMessage, opts any) error {
	if len(raw) == 0 {
		return nil
	}
	var top map[string]json.RawMessage
	if err := json.Unmarshal(raw, &top); err != nil {
		return &config.FieldError{Field: "Backend", Msg: "must be a JSON object"}
	}
	known := []string{"Type"}
	t := reflect.TypeOf(opts).Elem()
	for i := 0; i < t.NumField(); i++ {
		if f := t.Field(i); f.IsExported() {
			name := f.Name
			if tag, _, _ := strings.Cut(f.Tag.Get("json"), ","); tag != "" && tag != "-" {
				name = tag
			}
			known = append(known, name)
		}
	}
	var unknown []string
	for k := range top {
		found := false
		for _, n := range known {
			if strings.EqualFold(n, k) {
				found = true
				break
			}
		}
		if !found {
			unknown = append(unknown, k)
		}
	}
	if len(unknown) > 0 {
		sort.Strings(unknown)
		return &config.FieldError{Field: "Backend." + unknown[0], Msg: "unknown option (known: " + strings.Join(known, ", ") + ")"}
	}
	if err := json.Unmarshal(raw, opts); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			return &config.FieldError{Field: "Backend." + te.Field, Msg: "must be a JSON " + te.Type.Kind().String() + ", not " + te.Value}
		}
		return &config.FieldError{Field: "Backend", Msg: err.Error()}
	}
	return nil
}
