package layerconv_test

import (
	"archive/tar"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/layervisor/layervisor/internal/imagebuild"
	"github.com/layervisor/layervisor/internal/testutil"
)

func device(name string, typ byte, major, minor int64) imagebuild.Entry {
	return imagebuild.Raw(tar.Header{Name: name, Typeflag: typ, Mode: 0o640, Uid: 0, Gid: 6,
		Devmajor: major, Devminor: minor, ModTime: time.Unix(1700000000, 0)})
}

// Device nodes and fifos are imported as the OCI layer spec allows (a
// debootstrap rootfs has them under /dev): they appear in the loop-mounted
// image, and through an overlay over a lower layer, with their type, major
// and minor, and e2fsck passes the image.
func TestConvertDeviceNodes(t *testing.T) {
	testutil.NeedRoot(t)
	upper := []imagebuild.Entry{
		imagebuild.Dir("dev", 0o755),
		device("dev/null", tar.TypeChar, 1, 3),
		device("dev/sda1", tar.TypeBlock, 8, 1),
		device("dev/big", tar.TypeChar, 0xfff, 0xfffff), // the largest numbers Linux has
		device("dev/nul0", tar.TypeBlock, 0, 0),         // only a char device 0:0 is a whiteout
		imagebuild.Raw(tar.Header{Name: "dev/initctl", Typeflag: tar.TypeFifo, Mode: 0o600, ModTime: time.Unix(1700000000, 0)}),
		imagebuild.Hardlink("dev/null.link", "dev/null"),
	}
	// The lower layer has a regular file where the upper has a device:
	// the merged view must show the device, not a whiteout's absence.
	lower := []imagebuild.Entry{imagebuild.Dir("dev", 0o755), imagebuild.File("dev/null", "not a device", 0o644)}
	up := convertChecked(t, upper)
	merged := mergeLayers(t, up, convertChecked(t, lower))
	for _, root := range []string{filepath.Join(mountLayer(t, up), "content"), merged} {
		for _, c := range []struct {
			name         string
			typ          uint32
			major, minor uint32
		}{
			{"dev/null", unix.S_IFCHR, 1, 3},
			{"dev/null.link", unix.S_IFCHR, 1, 3},
			{"dev/sda1", unix.S_IFBLK, 8, 1},
			{"dev/big", unix.S_IFCHR, 0xfff, 0xfffff},
			{"dev/nul0", unix.S_IFBLK, 0, 0},
			{"dev/initctl", unix.S_IFIFO, 0, 0},
		} {
			var st unix.Stat_t
			p := filepath.Join(root, c.name)
			if err := unix.Lstat(p, &st); err != nil {
				t.Errorf("%s: %v", p, err)
				continue
			}
			if st.Mode&unix.S_IFMT != c.typ || unix.Major(st.Rdev) != c.major || unix.Minor(st.Rdev) != c.minor {
				t.Errorf("%s: mode %o, device %d:%d; want type %o, %d:%d", p, st.Mode, unix.Major(st.Rdev), unix.Minor(st.Rdev), c.typ, c.major, c.minor)
			}
			if c.typ != unix.S_IFIFO && (st.Mode&0o777 != 0o640 || st.Gid != 6) {
				t.Errorf("%s: mode %o gid %d, want 0640 and 6", p, st.Mode&0o777, st.Gid)
			}
		}
	}
}
