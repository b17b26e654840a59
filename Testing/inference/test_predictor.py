"""The predictor's placement of a refine point in each window (FocusNet's SOS-Net centres)."""

import torch

from medseg_core.data.preprocess import Grid
from medseg_core.inference.box_prompt import grid_index
from medseg_core.inference.heads import Heads


def test_a_point_lands_in_each_3d_window_that_holds_it_and_nowhere_else():
    heads = Heads(heatmaps=2, heatmap_classes=[2, 5])
    starts = [(0, 0, 0), (4, 8, 8), (-2, 10, 0)]
    out = heads.window_centers({5: (6.4, 12.6, 3.0)}, starts, (8, 8, 8), 3)
    assert out.shape == (3, 2, 3)
    assert (out[:, 0] == -1).all()  # class 2 was not prompted: its own heatmap peak
    assert out[2, 1].tolist() == [-1, -1, -1]  # y: 13 - 10 = 3 fits, z: 6 + 2 = 8 does not
    assert out[0, 1].tolist() == [-1, -1, -1]  # y 13 lies beyond a window of 8 from 0
    assert out[1, 1].tolist() == [-1, -1, -1]  # x 3 lies before a window starting at 8
    inside = heads.window_centers({5: (6.4, 12.6, 3.0)}, [(2, 8, 0)], (8, 8, 8), 3)
    assert inside[0, 1].tolist() == [4, 5, 3]  # rounded to the voxel, in the window's own voxels


def test_a_2d_window_is_one_slice_and_every_slice_takes_the_points_in_plane_position():
    heads = Heads(heatmaps=1, heatmap_classes=[1])
    out = heads.window_centers({1: (40.0, 20.2, 30.7)}, [(0, 16, 16), (39, 16, 16), (3, 0, 40)], (1, 32, 32), 2)
    assert out[0, 0].tolist() == [4, 15] and out[1, 0].tolist() == [4, 15]
    assert out[2, 0].tolist() == [-1, -1]


def test_grid_index_inverts_the_grids_geometry():
    rot = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    grid = Grid((10.0, -5.0, 2.0), (2.0, 3.0, 4.0), tuple(rot.flatten().tolist()), (20, 20, 20))
    ijk = torch.tensor([3.0, 4.0, 5.0])
    point = torch.tensor(grid.origin) + rot @ (ijk * torch.tensor(grid.spacing))
    z, y, x = grid_index(grid, point.tolist())
    assert [round(v, 6) for v in (x, y, z)] == [3.0, 4.0, 5.0]
