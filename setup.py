"""Install DeRy: ``pip install -e .`` (tools/setup_env.sh does this inside .venv/)."""
import os.path as osp

from setuptools import find_packages, setup


def get_version():
    ns = {}
    with open(osp.join(osp.dirname(__file__), 'dery', 'version.py')) as f:
        exec(compile(f.read(), 'version.py', 'exec'), ns)
    return ns['__version__']


def parse_requirements(fname):
    reqs = []
    with open(osp.join(osp.dirname(__file__), 'requirements', fname)) as f:
        for line in f:
            line = line.split('#')[0].strip()
            if line:
                reqs.append(line)
    return reqs


setup(
    name='dery',
    version=get_version(),
    description='DeRy: Deep Model Reassembly in the OpenMMLab style',
    long_description=open(osp.join(osp.dirname(__file__), 'README.md')).read()
    if osp.exists(osp.join(osp.dirname(__file__), 'README.md')) else '',
    long_description_content_type='text/markdown',
    license='Apache License 2.0',
    packages=find_packages(exclude=('configs', 'tools', 'tests', 'benchmarks', 'projects')),
    python_requires='>=3.9',
    install_requires=parse_requirements('runtime.txt'),
    extras_require=dict(
        tests=parse_requirements('tests.txt'),
        optional=parse_requirements('optional.txt')),
    zip_safe=False,
)
