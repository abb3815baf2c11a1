"""`make demo`: the end-to-end migration against local simulators (grows as the pieces land)."""

import sys


def main():
    print("esxi2ami.migrate demo: the migration modules and roles have not landed yet.")
    print("Missing: vsphere_ova_export, ec2_vmimport_role, ec2_import_image, guest_prepare, vm_to_ami.")
    print("Run `make test` to exercise what exists.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
