"""Rewrite a wheel without the files under the given path prefixes (and without their RECORD
lines), so that pip installs it as usual: used by py_wheels.sh to drop what
dm_control.suite.load never touches (locomotion and dog assets, MuJoCo's studio and
Filament renderer) and fit the device's carry limit.

    python py_trim_wheel.py WHEEL PREFIX [PREFIX ...]
"""

import os
import sys
import zipfile


def main() -> None:
    wheel, prefixes = sys.argv[1], tuple(sys.argv[2:])
    tmp = wheel + ".tmp"
    dropped = 0
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            name = info.filename
            if name.startswith(prefixes):
                dropped += info.file_size
                continue
            data = src.read(name)
            if name.endswith(".dist-info/RECORD"):
                lines = data.decode().splitlines()
                data = ("\n".join(l for l in lines if not l.startswith(prefixes)) + "\n").encode()
            dst.writestr(info, data)
    os.replace(tmp, wheel)
    print(f"{os.path.basename(wheel)}: dropped {dropped / 2**20:.1f} MiB uncompressed")


if __name__ == "__main__":
    main()
