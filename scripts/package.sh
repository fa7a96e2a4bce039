#!/usr/bin/env bash
# Builds Ferry's two Debian packages from the workspace (appliance/README.md "Packages"):
#   ferry-server  ferryd and ferryctl, ferryd.service, sysctl and udev settings, /etc/ferry;
#                 its postinst makes the `ferry` system user and /var/lib/ferry, and enables
#                 the unit, which starts nothing before `ferryctl init` made the appliance.
#   ferry-agent   the mobility service and its unit, which starts nothing before
#                 /etc/ferry/agent.toml exists.
# Plain dpkg-deb on a staged tree: the layout and the maintainer scripts are in this file and
# in appliance/debian/, with nothing generated behind them. Depends comes from dpkg-shlibdeps.
#
# Usage: scripts/package.sh [--profile release|dev] [--version VERSION] [--out DIR] [--no-build]
#   --profile   the cargo profile whose binaries go in (default release; CI packs its dev
#               build, stripped, to test the packaging without a second full build)
#   --version   the package version (default: the workspace's, e.g. 0.1.0)
#   --out       where the .deb files go (default target/debian)
#   --no-build  pack the binaries already built for that profile
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

profile=release
version=""
out="$root/target/debian"
build=1
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) profile="$2"; shift 2 ;;
    --version) version="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --no-build) build=0; shift ;;
    *) echo "package.sh: unknown argument $1 (see the header of this script)" >&2; exit 2 ;;
  esac
done
case "$profile" in
  release) bin_dir="$root/target/release" ;;
  dev) bin_dir="$root/target/debug" ;;
  *) echo "package.sh: --profile is release or dev, not $profile" >&2; exit 2 ;;
esac
if [ -z "$version" ]; then
  version="$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' Cargo.toml)"
fi
if ! [[ "$version" =~ ^[0-9][0-9A-Za-z.+~]*$ ]]; then
  echo "package.sh: '$version' is not a Debian native version" >&2
  exit 2
fi
for tool in dpkg-deb dpkg-shlibdeps fakeroot strip; do
  command -v "$tool" >/dev/null || { echo "package.sh: needs $tool (apt-get install dpkg-dev fakeroot binutils)" >&2; exit 2; }
done

if [ "$build" = 1 ]; then
  cargo build --locked --profile "$profile" --bin ferryd --bin ferryctl --bin ferry-agent
fi
arch="$(dpkg --print-architecture)"
stage="$root/target/debian-stage"
rm -rf "$stage"
mkdir -p "$out"

# stage_package NAME: the common part of both packages (docs, changelog, copyright).
stage_package() {
  local name="$1" tree="$stage/$1"
  install -d "$tree/DEBIAN" "$tree/usr/bin" "$tree/usr/share/doc/$name"
  sed "s/@VERSION@/$version/; s/@DATE@/$(date -R -d @"${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}")/" \
    appliance/debian/changelog | gzip -9n > "$tree/usr/share/doc/$name/changelog.gz"
  install -m 0644 appliance/debian/copyright "$tree/usr/share/doc/$name/copyright"
}

# install_binary SRC DEST: stripped, as Debian ships them (debug symbols are not packaged),
# with a manual page made from its --help (the full reference is in the README).
install_binary() {
  install -m 0755 "$1" "$2"
  strip --strip-unneeded --remove-section=.comment --remove-section=.note "$2"
  local name tree man
  name="$(basename "$2")"
  tree="$(dirname "$(dirname "$(dirname "$2")")")"
  man="$tree/usr/share/man/man1/$name.1"
  install -d "$(dirname "$man")"
  {
    printf '.TH %s 1 "" "ferry %s" "Ferry"\n' "$(echo "$name" | tr a-z A-Z)" "$version"
    printf '.SH NAME\n%s \\- %s\n' "$name" "$("$2" --help | head -1 | sed 's/\\/\\\\/g')"
    printf '.SH DESCRIPTION\n.nf\n'
    "$2" --help | tail -n +2 | sed 's/\\/\\e/g; s/^\./\\\&./; s/^'"'"'/\\\&'"'"'/'
    printf '.fi\n.SH SEE ALSO\n/usr/share/doc/ferry-server/README.appliance.md, https://github.com/ferry-dr/ferry\n'
  } > "$man"
  gzip -9n "$man"
}

# finish_package NAME DESCRIPTION_FILE: control (Depends from the binaries), md5sums, .deb.
finish_package() {
  local name="$1" tree="$stage/$1"
  local depends
  local binaries=()
  for binary in "$tree"/usr/bin/*; do binaries+=("-e$binary"); done
  depends="$(cd "$stage" && mkdir -p debian && printf 'Source: ferry\n\nPackage: %s\nArchitecture: any\n' "$name" > debian/control &&
    dpkg-shlibdeps -O "${binaries[@]}" | sed -n 's/^shlibs:Depends=//p')"
  [ -n "$depends" ] || { echo "package.sh: dpkg-shlibdeps found no dependencies for $name" >&2; exit 1; }
  local extra
  extra="$(sed -n 's/^Depends: //p' "appliance/debian/$name.control")"
  {
    echo "Package: $name"
    echo "Version: $version"
    echo "Architecture: $arch"
    echo "Maintainer: Ferry developers <ferry@ferry-dr.org>"
    echo "Installed-Size: $(du -sk --exclude=DEBIAN "$tree" | cut -f1)"
    echo "Depends: $depends${extra:+, $extra}"
    grep -v '^Depends: ' "appliance/debian/$name.control"
  } > "$tree/DEBIAN/control"
  for script in postinst prerm postrm; do
    if [ -f "appliance/debian/$name.$script" ]; then
      install -m 0755 "appliance/debian/$name.$script" "$tree/DEBIAN/$script"
    fi
  done
  if [ -f "appliance/debian/$name.conffiles" ]; then
    install -m 0644 "appliance/debian/$name.conffiles" "$tree/DEBIAN/conffiles"
  fi
  (cd "$tree" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z | xargs -0 md5sum > DEBIAN/md5sums)
  chmod 0644 "$tree/DEBIAN/md5sums"
  local deb="$out/${name}_${version}_${arch}.deb"
  fakeroot dpkg-deb --build --root-owner-group -Zxz "$tree" "$deb" >/dev/null
  echo "$deb"
}

# ferry-server
tree="$stage/ferry-server"
stage_package ferry-server
install_binary "$bin_dir/ferryd" "$tree/usr/bin/ferryd"
install_binary "$bin_dir/ferryctl" "$tree/usr/bin/ferryctl"
install -D -m 0644 appliance/systemd/ferryd.service "$tree/lib/systemd/system/ferryd.service"
install -D -m 0644 appliance/sysctl/90-ferry.conf "$tree/usr/lib/sysctl.d/90-ferry.conf"
install -D -m 0644 appliance/udev/60-ferry-nvme.rules "$tree/lib/udev/rules.d/60-ferry-nvme.rules"
install -D -m 0644 appliance/debian/ferryd.env "$tree/etc/ferry/ferryd.env"
install -m 0644 appliance/README.md "$tree/usr/share/doc/ferry-server/README.appliance.md"
finish_package ferry-server

# ferry-agent
tree="$stage/ferry-agent"
stage_package ferry-agent
install_binary "$bin_dir/ferry-agent" "$tree/usr/bin/ferry-agent"
install -D -m 0644 appliance/systemd/ferry-agent.service "$tree/lib/systemd/system/ferry-agent.service"
install -D -m 0644 appliance/debian/agent.toml.example "$tree/usr/share/doc/ferry-agent/examples/agent.toml"
finish_package ferry-agent
rm -rf "$stage"
