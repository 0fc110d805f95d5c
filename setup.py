"""campus-edge: edge gateway and energy-management daemon for schools."""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent


def requirements() -> list[str]:
    lines = (HERE / "requirements.txt").read_text(encoding="utf-8").splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]


setup(
    name="campus-edge",
    version="0.1.0",
    description="Edge gateway and energy-management daemon for schools (Modbus ACs, meters, relays, MQTT)",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.11",
    packages=find_packages(include=["edge*", "drivers*", "ems*", "cloud_sync*", "simulator*"]),
    package_data={"edge": ["screen_static/*"]},   # the energy screen's page, served by the daemon (edge.screen)
    # profiles and example configs are data; installed beside the packages so that a
    # non-editable install finds them too (see drivers.modbus.profile.PROFILE_DIR)
    data_files=[
        ("share/campus-edge/profiles", [str(p) for p in sorted((HERE / "config/profiles").glob("*.yaml"))]),
        ("share/campus-edge", ["config/example-school.yaml"]),
    ],
    install_requires=requirements(),
    entry_points={"console_scripts": ["campus-edge = edge.cli:main"]},
    classifiers=["Programming Language :: Python :: 3.11", "Operating System :: POSIX :: Linux"],
)
