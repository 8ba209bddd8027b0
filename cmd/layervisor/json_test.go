package main

import (
	"encoding/json"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"

	"github.com/layervisor/layervisor/pkg/diskimage"
	"github.com/layervisor/layervisor/pkg/regf"
	"github.com/layervisor/layervisor/pkg/store"
	"github.com/layervisor/layervisor/pkg/uvm"
)

// Fields several commands print.
const (
	uvmStateFields = `
		accel config config.bootDir config.bootTimeout config.cold config.cpus config.id config.initrd
		config.longLived config.memoryMB config.pmemBudgetMB config.qemu config.root config.rootPorts
		config.scratchSize config.scsiControllers config.vpmemMaxSize config.vpmemSlots config.windowsTemplate error
		owner owner.pid owner.start pid started status template`
	diskInfoFields = `
		fileSize format path type vhdDynamic vhdDynamic.blockSize vhdDynamic.blocks vhdDynamic.blocksPresent vhdFooter
		vhdFooter.checksum vhdFooter.creatorApp vhdFooter.creatorHostOS vhdFooter.creatorVersion vhdFooter.currentSize
		vhdFooter.dataOffset vhdFooter.diskType vhdFooter.features vhdFooter.formatVersion vhdFooter.geometry
		vhdFooter.geometry.cylinders vhdFooter.geometry.heads vhdFooter.geometry.sectorsPerTrack
		vhdFooter.originalSize vhdFooter.savedState vhdFooter.timestamp vhdFooter.uniqueID vhdx vhdx.blockSize
		vhdx.blocks vhdx.blocksPresent vhdx.creator vhdx.dataWriteGUID vhdx.diskID vhdx.fileSize vhdx.fileWriteGUID
		vhdx.logReplayed vhdx.logicalSectorSize vhdx.parentLinkage vhdx.parentLocator vhdx.parentPath
		vhdx.physicalSectorSize vhdx.type vhdx.virtualSize virtualSize`
	hiveKeyFields = `
		class hive hive.dirty hive.layered hive.replayedLogEntries hive.version inheritClass layer modified name path
		subkeyNames subkeys values values[].data values[].hex values[].name values[].tombstone values[].type`
	wclayerFields = `
		base bytes cim entries files layer parents seconds stdFiles tar utilityVM utilityVM.build utilityVM.diskID
		utilityVM.files utilityVM.partitionID`
)

// jsonContract is the scripting contract of --json (README.md): the field
// names each command prints, nested ones as a.b, array elements as a[].b.
// A change here is a change for every script: README.md must say the same.
var jsonContract = map[string]struct {
	out any // a value of the type the command prints
	// opaque are fields whose content is not listed: another
	// specification's format printed verbatim (the OCI image config:
	// Entrypoint, Env, …), or objects of the same shape as the top one
	// (a hive key's subkeys).
	opaque []string
	fields string
}{
	"image import": {store.ImportResult{}, []string{"image.config"}, `
		converted reused image image.chainIDs image.config image.configDigest image.diffIDs image.imported
		image.manifestDigest image.name image.platform image.size`},
	"image ls": {[]store.Image{}, []string{"[].config"}, `
		[].chainIDs [].config [].configDigest [].diffIDs [].imported [].manifestDigest [].name [].platform [].size`},
	"layer ls": {[]store.LayerInfo{}, nil, `
		[].chainID [].containers [].created [].diffID [].entries [].format [].images [].kind [].parent [].private
		[].size [].verified`},
	"container create": {store.Container{}, nil, `
		chainIDs created image name scratchFormat scratchSize sharesScratchOf`},
	"container mount": {containerMount{}, nil, `name rootfs`},
	"container ls": {[]store.ContainerStatus{}, nil, `
		[].chainIDs [].created [].image [].mounted [].name [].rootfs [].scratchFormat [].scratchSize [].sharesScratchOf`},
	"gc": {gcResult{}, nil, `
		deadRuns store store.mounts store.mounts.detached store.mounts.kept store.mounts.rolledBack
		store.mounts.unmounted store.removedLayers store.removedLocks store.removedTemp uvms uvms.initrds uvms.killed
		uvms.reaped uvms.templates`},
	"uvm create": {uvm.State{}, nil, uvmStateFields},
	"uvm start":  {uvm.State{}, nil, uvmStateFields},
	"uvm ls": {[]uvmRow{}, nil, `
		[].accel [].config [].config.bootDir [].config.bootTimeout [].config.cold [].config.cpus [].config.id
		[].config.initrd [].config.longLived [].config.memoryMB [].config.pmemBudgetMB [].config.qemu [].config.root
		[].config.rootPorts [].config.scratchSize [].config.scsiControllers [].config.vpmemMaxSize
		[].config.vpmemSlots [].config.windowsTemplate [].error [].memory [].memory.guestUsed [].memory.hostRSS
		[].owner [].owner.pid [].owner.start [].pid [].started [].status [].template`},
	"uvm image build": {uvm.InitramfsOptions{}, nil, `agent bootDir out runtime`},
	"uvm template ls": {[]uvm.TemplateInfo{}, nil, `
		[].diskBytes [].key [].manifest [].manifest.created [].manifest.format [].manifest.initrd
		[].manifest.initrdSHA256 [].manifest.kernel [].manifest.kernelSHA256 [].manifest.key [].manifest.qemu
		[].manifest.qemuVersion [].manifest.ramSize [].manifest.shape [].manifest.shape.accel [].manifest.shape.cpus
		[].manifest.shape.memoryMB [].manifest.shape.pmemBudgetMB [].manifest.shape.rootPorts
		[].manifest.shape.scsiControllers [].manifest.shape.vpmemSlots [].manifest.source [].manifest.stateSHA256
		[].stale`},
	"disk create":  {diskimage.Info{}, nil, diskInfoFields},
	"disk info":    {diskimage.Info{}, nil, diskInfoFields},
	"disk convert": {diskConvertResult{}, nil, `dataBytes seconds size writtenBytes`},
	"disk check": {diskimage.Report{}, nil, `
		info info.blockSize info.blocks info.blocksPresent info.creator info.dataWriteGUID info.diskID info.fileSize
		info.fileWriteGUID info.logReplayed info.logicalSectorSize info.parentLinkage info.parentLocator
		info.parentPath info.physicalSectorSize info.type info.virtualSize problems warnings`},
	"hive dump":      {regf.KeyJSON{}, []string{"subkeys"}, hiveKeyFields},
	"hive get":       {regf.KeyJSON{}, []string{"subkeys"}, hiveKeyFields},
	"hive get VALUE": {regf.ValueJSON{}, nil, `data hex name tombstone type`},
	"cim ls": {[]cimEntry{}, nil, `
		[].attributes [].changeTime [].creationTime [].dir [].eas [].fileID [].lastAccessTime [].lastWriteTime
		[].links [].links[].name [].links[].parent [].path [].reparseData [].reparseTag [].securityDescriptor [].size
		[].streams [].streams[].name [].streams[].size`},
	"cim stat": {cimEntry{}, nil, `
		attributes changeTime creationTime dir eas fileID lastAccessTime lastWriteTime links links[].name
		links[].parent path reparseData reparseTag securityDescriptor size streams streams[].name streams[].size`},
	"cim extract":       {cimExtractResult{}, nil, `dir entries`},
	"wclayer import":    {wclayerResult{}, nil, wclayerFields},
	"wclayer export":    {wclayerResult{}, nil, wclayerFields},
	"dev build-wclayer": {synthResult{}, nil, `bytes entries files tar`},
}

// noJSON are the commands whose output --json leaves as it is, or only
// silences (confirmations): they print no JSON.
var noJSON = []string{
	"image rm", "container unmount", "container rm", "run", "serve",
	"uvm exec", "uvm stop", "uvm rm", "uvm template rm",
	"hive create", "hive set", "hive delete", "hive import", "hive export", "hive merge", "hive diff", "hive cimboot",
	"cim cat", "dev build-image",
}

var lowerCamel = regexp.MustCompile(`^[a-z][a-zA-Z0-9]*$`)

// TestJSONFieldNames pins the field names of every --json output and
// checks they are all lowerCamelCase.
func TestJSONFieldNames(t *testing.T) {
	for cmd, c := range jsonContract {
		got := jsonPaths(t, marshalFilled(t, c.out), c.opaque)
		if want := strings.Fields(c.fields); !slices.Equal(got, sortedSet(want)) {
			t.Errorf("%s --json fields:\n got %s\nwant %s", cmd, strings.Join(got, " "), strings.Join(sortedSet(want), " "))
		}
		for _, p := range got {
			for _, seg := range strings.Split(strings.ReplaceAll(p, "[]", ""), ".") {
				if seg != "" && !lowerCamel.MatchString(seg) {
					t.Errorf("%s --json: field %q of %s is not lowerCamelCase", cmd, seg, p)
				}
			}
		}
	}
}

// Every command is in the contract or says it prints no JSON, so a new
// command has to choose.
func TestJSONContractCoversEveryCommand(t *testing.T) {
	seen := map[string]bool{}
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		for _, k := range c.Commands() {
			walk(k)
		}
		if !c.Runnable() || c.Name() == "help" || c.Name() == "completion" {
			return
		}
		p := strings.TrimPrefix(c.CommandPath(), "layervisor ")
		seen[p] = true
		if _, ok := jsonContract[p]; !ok && !slices.Contains(noJSON, p) {
			t.Errorf("%q is neither in jsonContract nor in noJSON", p)
		}
	}
	walk(newRootCmd())
	for p := range jsonContract {
		if !seen[strings.TrimSuffix(p, " VALUE")] {
			t.Errorf("jsonContract names %q, which is not a command", p)
		}
	}
}

// checkJSON runs a command with --json and checks that what it prints has
// only the contract's fields for cmd; it returns the output.
func (c *cli) checkJSON(cmd string, args ...string) string {
	c.t.Helper()
	out := c.ok(append([]string{"--json"}, args...)...)
	want := sortedSet(strings.Fields(jsonContract[cmd].fields))
	for _, f := range jsonPaths(c.t, []byte(out), jsonContract[cmd].opaque) {
		if _, found := slices.BinarySearch(want, f); !found {
			c.t.Errorf("%s --json prints %q, which the contract does not name", cmd, f)
		}
	}
	return out
}

// TestJSONCLIOutputs runs the commands that need no store and checks that
// what they print has only the contract's fields.
func TestJSONCLIOutputs(t *testing.T) {
	c := &cli{t: t, bin: layervisorBin(t), root: filepath.Join(t.TempDir(), "root")}
	dir := t.TempDir()
	p := func(s string) string { return filepath.Join(dir, s) }
	c.checkJSON("dev build-wclayer", "dev", "build-wclayer", "--uvm", "--files", "40", "--size-mb", "1", p("base.tar"))
	c.checkJSON("wclayer import", "wclayer", "import", p("base.tar"), p("s/base"))
	c.checkJSON("wclayer export", "wclayer", "export", p("s/base"), p("again.tar"))
	cim := p("s/cim-layers/base.cim")
	c.checkJSON("cim ls", "cim", "ls", "-r", cim)
	c.checkJSON("cim stat", "cim", "stat", cim, "Files")
	c.checkJSON("cim extract", "cim", "extract", cim, p("x"), "files") // any case, as on Windows
	hive := p("h")
	c.ok("hive", "create", hive)
	c.ok("hive", "set", hive, `A\B`, "v", "--type", "REG_DWORD", "1")
	c.ok("hive", "set", hive, `A\B\C`, "s", "text")
	c.checkJSON("hive dump", "hive", "dump", hive)
	c.checkJSON("hive get", "hive", "get", hive, "A")
	c.checkJSON("hive get VALUE", "hive", "get", hive, `A\B`, "v")
	c.checkJSON("disk create", "disk", "create", p("d.vhd"), "8M", "--type", "dynamic")
	c.checkJSON("disk info", "disk", "info", p("d.vhd"))
	c.checkJSON("disk create", "disk", "create", p("d.vhdx"), "8M")
	c.checkJSON("disk convert", "disk", "convert", p("d.vhdx"), p("d.img"))
	c.checkJSON("disk check", "disk", "check", p("d.vhdx"))
}

// TestJSONCLIStoreOutputs does the same for the commands over a store.
func TestJSONCLIStoreOutputs(t *testing.T) {
	c := newCLI(t)
	c.checkJSON("image import", "image", "import", "--name", "demo:1", demoImage(t, "oci-tar"))
	c.checkJSON("image ls", "image", "ls")
	c.checkJSON("layer ls", "layer", "ls")
	c.checkJSON("container create", "container", "create", "c1", "--image", "demo:1")
	c.checkJSON("container mount", "container", "mount", "c1")
	c.checkJSON("container ls", "container", "ls")
	c.ok("container", "rm", "c1")
	c.checkJSON("uvm create", "uvm", "create", "v1")
	c.checkJSON("uvm ls", "uvm", "ls")
	c.checkJSON("uvm template ls", "uvm", "template", "ls")
	c.ok("uvm", "rm", "v1")
	c.checkJSON("gc", "gc")
}

// marshalFilled is v's type's JSON with every field set, so that no
// omitempty field is left out.
func marshalFilled(t *testing.T, v any) []byte {
	t.Helper()
	p := reflect.New(reflect.TypeOf(v))
	fill(p.Elem(), map[reflect.Type]bool{})
	b, err := json.Marshal(p.Interface())
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// mapKey marks a map: its keys are data, not field names.
const mapKey = "\x00map"

func fill(v reflect.Value, open map[reflect.Type]bool) {
	switch v.Kind() {
	case reflect.Pointer:
		if open[v.Type().Elem()] {
			return // a recursive type: one level is enough (its elements print as null)
		}
		v.Set(reflect.New(v.Type().Elem()))
		fill(v.Elem(), open)
	case reflect.Struct:
		if v.Type() == reflect.TypeOf(time.Time{}) {
			v.Set(reflect.ValueOf(time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC)))
			return
		}
		open[v.Type()] = true
		for i := range v.NumField() {
			if v.Field(i).CanSet() {
				fill(v.Field(i), open)
			}
		}
		delete(open, v.Type())
	case reflect.Slice:
		v.Set(reflect.MakeSlice(v.Type(), 1, 1))
		fill(v.Index(0), open)
	case reflect.Array:
		for i := range v.Len() {
			fill(v.Index(i), open)
		}
	case reflect.Map:
		v.Set(reflect.MakeMap(v.Type()))
		k, e := reflect.New(v.Type().Key()).Elem(), reflect.New(v.Type().Elem()).Elem()
		if k.Kind() == reflect.String {
			k.SetString(mapKey)
		}
		fill(e, open)
		v.SetMapIndex(k, e)
	case reflect.Interface:
		v.Set(reflect.ValueOf("x"))
	case reflect.String:
		v.SetString("x")
	case reflect.Bool:
		v.SetBool(true)
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		v.SetInt(1)
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		v.SetUint(1)
	case reflect.Float32, reflect.Float64:
		v.SetFloat(1)
	}
}

// jsonPaths lists the field names in b as sorted paths: a.b for nested
// objects, a[].b in arrays. Maps' keys are data and not listed; nor is
// what is under an opaque path.
func jsonPaths(t *testing.T, b []byte, opaque []string) []string {
	t.Helper()
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatal(err)
	}
	set := map[string]bool{}
	var walk func(prefix string, v any)
	walk = func(prefix string, v any) {
		switch v := v.(type) {
		case map[string]any:
			if _, ok := v[mapKey]; ok {
				return
			}
			for k, sub := range v {
				p := k
				if prefix != "" {
					p = prefix + "." + k
				}
				set[p] = true
				if !slices.Contains(opaque, p) {
					walk(p, sub)
				}
			}
		case []any:
			for _, e := range v {
				walk(prefix+"[]", e)
			}
		}
	}
	walk("", v)
	out := make([]string, 0, len(set))
	for p := range set {
		out = append(out, p)
	}
	slices.Sort(out)
	return out
}

func sortedSet(s []string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return slices.Compact(s)
}
