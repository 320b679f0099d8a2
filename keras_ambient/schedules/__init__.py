"""Noise schedules of pretrained parameterizations (docs/method.md §6)."""

from keras_ambient.schedules.vp_schedule import VPSchedule
