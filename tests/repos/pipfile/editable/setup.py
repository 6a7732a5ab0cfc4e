from setuptools import setup

setup(name="demo", py_modules=["demo"])
